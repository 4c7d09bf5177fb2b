import gzip
import struct

import numpy as np
import pytest

from fedsim.data import DataNotFoundError, find_fashion_mnist, iid_partition, load_fashion_mnist, make_toy_images
from fedsim.data.fashion_mnist import DEBIAN_DIR, FILES, read_idx


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_fashion_mnist(folder, n_train=20, n_test=5):
    rng = np.random.default_rng(0)
    write_idx(folder / FILES["x_train"], rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(folder / FILES["y_train"], rng.integers(0, 10, n_train))
    write_idx(folder / FILES["x_test"], rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(folder / FILES["y_test"], rng.integers(0, 10, n_test))


def test_idx_reader_reads_a_hand_written_file(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), a)


def test_idx_reader_rejects_a_file_whose_header_lies(tmp_path):
    with gzip.open(tmp_path / "bad.gz", "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "bad.gz")


def test_data_dir_is_used(tmp_path):
    fake_fashion_mnist(tmp_path)
    ds = load_fashion_mnist(tmp_path)
    assert ds.x_train.shape == (20, 28, 28) and ds.y_test.shape == (5,)


def test_missing_data_names_every_place_looked_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr("fedsim.data.fashion_mnist.DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(DataNotFoundError) as e:
        find_fashion_mnist()
    msg = str(e.value)
    assert str(tmp_path / "env") in msg and str(tmp_path / "debian") in msg and ".keras/datasets/fashion-mnist" in msg
    assert "dataset-fashion-mnist" in msg and "fedsim data fetch" in msg and "--data-dir" in msg


def test_fedsim_data_env_var_wins(tmp_path, monkeypatch):
    fake_fashion_mnist(tmp_path)
    monkeypatch.setenv("FEDSIM_DATA", str(tmp_path))
    assert find_fashion_mnist() == tmp_path


def test_iid_partition_covers_every_sample_once_and_is_seeded():
    shards = iid_partition(103, 10, seed=3)
    together = np.concatenate(shards)
    assert sorted(together.tolist()) == list(range(103))
    assert {len(s) for s in shards} == {10, 11}
    again = iid_partition(103, 10, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again))
    other = iid_partition(103, 10, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(shards, other))


def test_more_devices_than_samples_still_gives_every_device_one():
    shards = iid_partition(10, 25, seed=0)
    assert len(shards) == 25 and all(len(s) == 1 for s in shards)
    counts = np.bincount(np.concatenate(shards), minlength=10)
    assert counts.min() >= 2 and counts.max() <= 3  # each sample held by at most ceil(25 / 10) devices


def test_synthetic_has_fashion_mnist_shapes():
    ds = make_toy_images(samples_per_class=5, test_per_class=2)
    assert ds.x_train.shape == (50, 28, 28) and ds.x_train.dtype == np.uint8
    assert sorted(set(ds.y_train.tolist())) == list(range(10))


@pytest.mark.real_data
def test_real_fashion_mnist_from_the_debian_package():
    assert DEBIAN_DIR.is_dir(), "CI installs dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)"
    ds = load_fashion_mnist(DEBIAN_DIR)
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10


def test_a_truncated_data_file_is_caught_before_any_work(tmp_path):
    from fedsim.data import DataError, DataRecipe, check_fashion_mnist

    fake_fashion_mnist(tmp_path, n_train=200)
    assert check_fashion_mnist(tmp_path)["x_train"] == (200, 28, 28)
    f = tmp_path / FILES["x_train"]
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or damaged|not a readable gzip"):
        DataRecipe("fashion_mnist", str(tmp_path)).check()
    f.write_bytes(b"plain text, not gzip")
    with pytest.raises(DataError, match="not a readable gzip IDX file"):
        DataRecipe("fashion_mnist", str(tmp_path)).check()


@pytest.mark.real_data
def test_the_installed_fashion_mnist_passes_the_check():
    from fedsim.data import check_fashion_mnist

    assert check_fashion_mnist(DEBIAN_DIR)["x_test"] == (10000, 28, 28)
