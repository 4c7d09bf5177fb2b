import numpy as np
import pytest

from fedsim.checkpoint import _read_with_tensorflow, read_checkpoint, write_checkpoint
from fedsim.checkpoint.tfv1 import ChecksumError, UnsupportedCheckpoint, read_tfv1


def test_fast_reader_equals_tensorflows_on_a_device_checkpoint(any_runner, shm_scratch):
    path = shm_scratch / "d.ckpt"
    any_runner.save(path)
    fast, slow = read_tfv1(path.read_bytes()), _read_with_tensorflow(path)
    assert set(fast) == set(slow) and len(fast) in (1, 4)  # packed, or one tensor per weight
    for k in slow:
        assert fast[k].dtype == slow[k].dtype and fast[k].shape == slow[k].shape
        np.testing.assert_array_equal(fast[k], slow[k])


def test_fast_reader_on_hand_made_tensors(shm_scratch):
    w = {"a/k": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7.0, -8.5], np.float32)}
    back = read_tfv1(write_checkpoint(w, shm_scratch))
    np.testing.assert_array_equal(back["a/k"], w["a/k"])
    np.testing.assert_array_equal(back["b"], w["b"])


@pytest.mark.parametrize("cut", [1, 40, 48, 1000, 200_000, 407_000])
def test_truncated_files_are_refused(any_runner, shm_scratch, cut):
    runner = any_runner
    path = shm_scratch / "d.ckpt"
    runner.save(path)
    with pytest.raises(ValueError):
        read_tfv1(path.read_bytes()[:cut])


def test_other_dtypes_fall_back_to_tensorflow(shm_scratch):
    w = {"steps": np.array([3, 4], np.int32)}
    data = write_checkpoint(w, shm_scratch)
    with pytest.raises(UnsupportedCheckpoint):
        read_tfv1(data)
    back = read_checkpoint(data, shm_scratch)
    np.testing.assert_array_equal(back["steps"], w["steps"])


def test_writer_is_byte_for_byte_what_tensorflow_save_writes(any_runner, shm_scratch):
    runner = any_runner
    import tensorflow as tf

    from fedsim.checkpoint.tfv1_write import write_tfv1

    path = shm_scratch / "d.ckpt"
    runner.save(path)
    device_bytes = path.read_bytes()
    assert write_tfv1(read_tfv1(device_bytes), one_block=True) == device_bytes
    many = {f"layer{i}/w": np.full((i + 1,), i, np.float32) for i in range(40)}  # > 16 keys: restarts
    many["scalar"] = np.array(2.5, np.float32)
    tf_path = shm_scratch / "tf.ckpt"
    names = sorted(many)
    tf.raw_ops.Save(filename=str(tf_path), tensor_names=names, data=[many[n] for n in names])
    assert write_tfv1(many, one_block=True) == tf_path.read_bytes()


def test_the_default_layout_gives_each_entry_its_own_block_and_every_reader_reads_it(any_runner, shm_scratch):
    """What the coordinator writes: TensorFlow's reader, the artifact's restore signature and the
    numpy reader all read it, and restoring it reads less than Save's single-block layout."""
    import tensorflow as tf

    from fedsim.checkpoint import unpack
    from fedsim.checkpoint.tfv1_write import write_tfv1

    any_runner.save(shm_scratch / "d.ckpt")
    weights = {k: v + 0.5 for k, v in read_tfv1((shm_scratch / "d.ckpt").read_bytes()).items()}
    split, single = write_tfv1(weights), write_tfv1(weights, one_block=True)
    assert split != single
    path = shm_scratch / "g.ckpt"
    path.write_bytes(split)
    reader = tf.train.load_checkpoint(str(path))
    for name, value in weights.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value)
        np.testing.assert_array_equal(read_tfv1(split)[name], value)
    restored = any_runner.restore(path)
    for name, value in unpack(weights, any_runner.layout).items():
        np.testing.assert_array_equal(restored[name], value)


def test_the_layout_fast_path_reads_new_values_and_refuses_changed_structure(tensors_artifact, shm_scratch, toy):
    from conftest import batch

    from fedsim.device import Runner

    runner = Runner(tensors_artifact)
    from fedsim.checkpoint.tfv1 import _LAYOUTS

    path = shm_scratch / "d.ckpt"
    runner.save(path)
    first = path.read_bytes()
    read_tfv1(first)
    assert len(first) in _LAYOUTS  # the full parse left a layout behind
    x, y = batch(toy)
    runner.train(x, y)
    runner.save(path)
    second = path.read_bytes()
    assert len(second) == len(first) and second != first
    fast, slow = read_tfv1(second), _read_with_tensorflow(path)
    for k in slow:
        np.testing.assert_array_equal(fast[k], slow[k])
    renamed = second.replace(b"mlp/hidden/bias", b"mlp/hidden/bia5")  # same length, other structure
    with pytest.raises(ChecksumError):  # a changed name is not read as the old one: its block fails its crc
        read_tfv1(renamed)


@pytest.mark.parametrize("where", ["weight", "meta"])
def test_a_flipped_bit_fails_the_block_checksum_on_the_full_parse_and_the_fast_path(any_runner, shm_scratch, where):
    from fedsim.checkpoint.tfv1 import _LAYOUTS

    path = shm_scratch / "d.ckpt"
    any_runner.save(path)
    good = path.read_bytes()
    name = b"fedsim/packed" if b"fedsim/packed" in good else b"mlp/hidden/kernel"
    at = good.rindex(name) + len(name) + 200 if where == "weight" else good.index(name) + 1
    bad = bytearray(good)
    bad[at] ^= 0x04
    bad = bytes(bad)
    _LAYOUTS.clear()
    with pytest.raises(ChecksumError, match="crc32c"):
        read_tfv1(bad)  # full parse
    read_tfv1(good)  # leaves the layout behind
    with pytest.raises(ChecksumError, match="crc32c"):
        read_tfv1(bad)  # fast path (for "meta" the fixed bytes differ: full parse again)
