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


# ---- Synthetic(alpha, beta) ----------------------------------------------------------------------
def test_synthetic_alpha_beta_has_the_papers_shape_and_one_user_per_device():
    from fedsim.data import make_synthetic

    ds = make_synthetic(1.0, 1.0, num_devices=30, seed=0)
    assert ds.name == "synthetic:1,1" and ds.x_train.shape[1:] == (60,) and ds.x_train.dtype == np.float32
    assert ds.task.kind == "features" and ds.task.num_classes == 10
    assert set(ds.device_train.tolist()) == set(range(30)) == set(ds.device_test.tolist())
    sizes = np.bincount(ds.device_train, minlength=30) + np.bincount(ds.device_test, minlength=30)
    assert sizes.min() >= 50  # lognormal(4, 2) + 50 per device
    # each device keeps int(10%) of its samples (at least one) for testing
    np.testing.assert_array_equal(np.bincount(ds.device_test, minlength=30), np.maximum(1, (sizes * 0.1).astype(int)))
    again = make_synthetic(1.0, 1.0, num_devices=30, seed=0)
    np.testing.assert_array_equal(ds.x_train, again.x_train)
    assert not np.array_equal(make_synthetic(1.0, 1.0, num_devices=30, seed=1).y_train[:50], ds.y_train[:50])


def test_synthetic_feature_statistics_follow_sigma_and_beta():
    """Within a device feature j has variance j^-1.2 (Sigma's diagonal); across devices the feature
    means spread with beta (v_k ~ N(B_k, 1), B_k ~ N(0, beta))."""
    from fedsim.data import make_synthetic

    sizes = np.full(40, 3000)
    calm = make_synthetic(0.0, 0.0, 40, seed=3, sizes=sizes)
    x0 = calm.x_train[calm.device_train == 0].astype(np.float64)
    expected = np.arange(1, 61) ** -1.2
    np.testing.assert_allclose(x0.var(axis=0), expected, rtol=0.15)
    device_means = lambda ds: np.array([ds.x_train[ds.device_train == k].mean() for k in range(40)])  # noqa: E731
    wild = make_synthetic(0.0, 5.0, 40, seed=3, sizes=sizes)
    # mean over 60 features of v_k: B_k + N(0, 1/60); B_k = 0 when beta = 0, spread 5 when beta = 5
    assert device_means(calm).std() < 0.3 and device_means(wild).std() > 2.5


def test_synthetic_without_parameters_is_refused_with_the_fix():
    from fedsim.experiment.config import Config, ConfigError

    with pytest.raises(ConfigError, match="synthetic:ALPHA,BETA"):
        Config(dataset="synthetic")
    with pytest.raises(ConfigError, match="synthetic:1,1"):
        Config(dataset="synthetic:1")
    assert Config(dataset="synthetic:0.5,0.5").partition_spec == "natural"  # one generated user per device
    assert Config(dataset="synthetic:0.5,0.5", partition="iid").partition_spec == "iid"
    assert Config().replace(dataset="synthetic:1,1").partition_spec == "natural"


# ---- the user's own data ---------------------------------------------------------------------------
def _npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.normal(size=(40, 6)).astype(np.float32),
        y_train=rng.integers(0, 3, 40),
        x_test=rng.normal(size=(10, 6)).astype(np.float32),
        y_test=rng.integers(0, 3, 10),
    )
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_an_npz_of_arrays_is_a_data_set(tmp_path):
    from fedsim.data import DataRecipe

    f = _npz(tmp_path / "mine.npz", device_train=np.repeat([10, 20, 30, 40], 10), device_test=np.repeat([10, 20], 5))
    recipe = DataRecipe(path=str(f))
    recipe.check()
    ds = recipe.load()
    assert recipe.natural and ds.name == "mine.npz" and ds.task.describe() == "6 float features, 3 classes"
    assert ds.natural_devices == 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(y_test=None), "missing array(s) y_test"),
        (dict(extra=np.zeros(3)), "unknown array(s) extra"),
    ],
)
def test_an_npz_missing_or_with_unknown_arrays_is_one_line(tmp_path, overrides, message):
    from fedsim.data import DataError, DataRecipe

    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataRecipe(path=str(_npz(tmp_path / "d.npz", **overrides))).check()
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        DataRecipe(path=str(tmp_path / "junk.npz")).check()


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(x_train=np.zeros((5, 3)), y_train=np.zeros(4, int)), "x_train has 5 samples but y_train has 4 labels"),
        (
            dict(y_train=np.array([0, 1, 7, 1, 0]), num_classes=3),
            r"y_train labels must be class ids in \[0, 3\), got 0..7",
        ),
        (dict(y_train=np.array([0, 1, -1, 1, 0])), r"labels must be class ids in \[0, 2\), got -1..1"),
        (dict(y_train=np.array([0, 1, 0.5, 1, 0])), "y_train must be integer class ids, got float64"),
        (dict(x_train=np.array([["a"] * 3] * 5)), "inputs of dtype <U1 cannot be fed to a model"),
        (
            dict(x_train=np.array([[0.0, np.nan, 1.0]] + [[0.0] * 3] * 4)),
            "x_train holds NaN or Inf features in 1 sample",
        ),
        (dict(x_test=np.zeros((2, 4))), r"train samples are \(3,\) but test samples \(4,\)"),
    ],
)
def test_bad_arrays_get_one_line_each(arrays, message):
    from fedsim.data import ArrayDataset, DataError

    base = dict(
        x_train=np.zeros((5, 3)), y_train=np.array([0, 1, 0, 1, 0]), x_test=np.zeros((2, 3)), y_test=np.array([0, 1])
    )
    base.update(arrays)
    with pytest.raises(DataError, match=message) as e:
        ArrayDataset(**base)
    assert "\n" not in str(e.value)


def test_pandas_frames_are_arrays_too():
    import pandas as pd

    from fedsim.data import ArrayDataset

    frame = pd.DataFrame({"a": [0.1, 0.2, 0.3], "b": [1, 2, 3]})
    ds = ArrayDataset(frame, pd.Series([0, 1, 1]), frame.iloc[:2], pd.Series([1, 0]))
    assert ds.x_train.dtype == np.float32 and ds.task.input_shape == (2,)


def test_toy_images_drawn_in_chunks_are_the_images_one_draw_gives():
    """The generator draws its noise a chunk at a time (no float64 copy of the whole set): the images
    are those of one draw, across chunk boundaries."""
    from fedsim.data.toy import CHUNK, make_toy_images

    per_class = CHUNK // 10 + 37  # more images than one chunk
    made = make_toy_images(per_class, 5, seed=4)
    rng = np.random.default_rng(4)
    prototypes = rng.uniform(0, 255, size=(10, 28, 28))
    y = np.repeat(np.arange(10, dtype=np.int32), per_class)
    x = np.clip(prototypes[y] + rng.normal(0, 90, size=(len(y), 28, 28)), 0, 255).astype(np.uint8)
    order = rng.permutation(len(y))
    np.testing.assert_array_equal(made.x_train, x[order])
    np.testing.assert_array_equal(made.y_train, y[order])
