import numpy as np
import pytest

from fedsim.checkpoint import CheckpointError, check_weights, read_checkpoint, spec_of, write_checkpoint


def test_write_then_read_round_trips(weights_like, shm_scratch):
    w = weights_like(1.5)
    back = read_checkpoint(write_checkpoint(w, shm_scratch), shm_scratch)
    assert set(back) == set(w)
    for k in w:
        np.testing.assert_array_equal(back[k], w[k])


def test_written_checkpoint_restores_through_the_restore_signature(any_runner, shm_scratch):
    from fedsim.checkpoint import unpack

    runner = any_runner
    initial = runner.initial_checkpoint(shm_scratch)
    weights = {k: v + 1.0 for k, v in read_checkpoint(initial, shm_scratch).items()}
    path = shm_scratch / "g.ckpt"
    path.write_bytes(write_checkpoint(weights, shm_scratch))
    restored = runner.restore(path)
    named = unpack(weights, runner.layout)
    assert restored.keys() == named.keys() and len(named) == 4
    for k in named:
        np.testing.assert_array_equal(restored[k], named[k])


@pytest.mark.parametrize("data", [b"", b"garbage" * 100])
def test_unreadable_bytes_raise_checkpoint_error(data, shm_scratch):
    with pytest.raises(CheckpointError):
        read_checkpoint(data, shm_scratch)


def test_truncated_checkpoint_is_rejected(weights_like, shm_scratch):
    data = write_checkpoint(weights_like(1.0), shm_scratch)
    with pytest.raises(CheckpointError):
        read_checkpoint(data[: len(data) // 2], shm_scratch)


def test_check_weights_names_what_is_wrong(weights_like):
    spec = spec_of(weights_like(0.0))
    check_weights(weights_like(2.0), spec)
    w = weights_like(1.0)
    del w["a/bias"]
    with pytest.raises(CheckpointError, match="missing weight.*a/bias"):
        check_weights(w, spec)
    w = weights_like(1.0)
    w["a/kernel"] = np.zeros((3, 2), np.float32)
    with pytest.raises(CheckpointError, match="a/kernel is float32\\[3, 2\\], expected float32\\[2, 3\\]"):
        check_weights(w, spec)
    w = weights_like(1.0)
    w["a/bias"] = w["a/bias"].astype(np.float64)
    with pytest.raises(CheckpointError, match="a/bias is float64"):
        check_weights(w, spec)
    w = weights_like(1.0)
    w["a/bias"][1] = np.nan
    with pytest.raises(CheckpointError, match="a/bias holds NaN or Inf"):
        check_weights(w, spec)
    w = weights_like(1.0)
    w["extra"] = np.zeros(1, np.float32)
    with pytest.raises(CheckpointError, match="unexpected weight"):
        check_weights(w, spec)


def test_flat_reader_scatters_a_models_checkpoints_into_one_vector(weights_like, shm_scratch):
    from fedsim.checkpoint import FlatReader

    spec = spec_of(weights_like(0.0))
    reader = FlatReader(spec)
    path = shm_scratch / "d.ckpt"
    path.write_bytes(write_checkpoint(weights_like(1.0)))
    parsed, flat, size = reader.read(path)  # the first file is parsed: no vector yet
    assert flat is None and size == path.stat().st_size and set(parsed) == set(spec)
    w = {"a/kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "a/bias": np.array([-1.5, 0.25, 7.0], np.float32)}
    path.write_bytes(write_checkpoint(w))
    got, flat, _ = reader.read(path)
    assert flat is not None
    np.testing.assert_array_equal(flat, np.concatenate([w[name].ravel() for name in spec]))
    for name, value in w.items():
        np.testing.assert_array_equal(got[name], value)
    check_weights(got, spec, flat)


def test_flat_reader_sends_anything_else_through_the_full_reader(weights_like, shm_scratch):
    from fedsim.checkpoint import FlatReader

    spec = spec_of(weights_like(0.0))
    reader = FlatReader(spec)
    path = shm_scratch / "d.ckpt"
    good = write_checkpoint(weights_like(1.0))
    path.write_bytes(good)
    reader.read(path)
    path.write_bytes(good[:-10])  # truncated
    with pytest.raises(CheckpointError):
        reader.read(path)
    path.write_bytes(good + b"\0")  # longer than the model's checkpoints
    with pytest.raises(CheckpointError):
        reader.read(path)
    other = {"a/kernel": np.zeros((2, 3), np.float32), "b/bias": np.zeros(3, np.float32)}  # same size, other name
    path.write_bytes(write_checkpoint(other))
    weights, flat, _ = reader.read(path)
    assert flat is None and set(weights) == {"a/kernel", "b/bias"}
    with pytest.raises(CheckpointError, match="missing weight"):
        check_weights(weights, spec, flat)
    path.unlink()
    with pytest.raises(CheckpointError, match="cannot read"):
        reader.read(path)


def test_flat_reader_values_are_checked_for_nan_by_name(weights_like, shm_scratch):
    from fedsim.checkpoint import FlatReader

    spec = spec_of(weights_like(0.0))
    reader = FlatReader(spec)
    path = shm_scratch / "d.ckpt"
    path.write_bytes(write_checkpoint(weights_like(1.0)))
    reader.read(path)
    bad = weights_like(1.0)
    bad["a/bias"][1] = np.inf
    path.write_bytes(write_checkpoint(bad))
    weights, flat, _ = reader.read(path)
    assert flat is not None
    with pytest.raises(CheckpointError, match="a/bias holds NaN or Inf"):
        check_weights(weights, spec, flat)


def _flip(data: bytes, at: int, bit: int = 3) -> bytes:
    out = bytearray(data)
    out[at] ^= 1 << bit
    return bytes(out)


def test_flat_reader_verifies_block_checksums_on_its_fast_path(any_runner, shm_scratch):
    """A device checkpoint with one flipped bit in a weight is refused by its crc32c, also once the
    reader has its scatter-read plan (the floats land straight in the vector: the checksum is the
    only thing that can tell)."""
    from fedsim.checkpoint import FlatReader

    path = shm_scratch / "d.ckpt"
    any_runner.save(path)
    good = path.read_bytes()
    reader = FlatReader(spec_of(read_checkpoint(good)))
    reader.read(path)
    _, flat, _ = reader.read(path)
    assert flat is not None  # the fast path
    path.write_bytes(_flip(good, len(good) // 2))
    with pytest.raises(CheckpointError, match="not a readable TF v1 checkpoint: block at byte 0 fails its crc32c"):
        reader.read(path)
    path.write_bytes(good)
    _, flat_again, _ = reader.read(path)
    assert flat_again is not None


def test_a_corrupt_upload_is_refused_without_importing_tensorflow(tmp_path):
    """The coordinator's reader refuses truncated, bit-flipped and garbage checkpoints itself."""
    import subprocess
    import sys

    good = write_checkpoint({"a/kernel": np.ones((64, 32), np.float32), "a/bias": np.zeros(32, np.float32)})
    (tmp_path / "good.ckpt").write_bytes(good)
    code = f"""
import sys
from pathlib import Path
from fedsim.checkpoint import CheckpointError, read_checkpoint
good = Path({str(tmp_path / "good.ckpt")!r}).read_bytes()
flipped = bytearray(good); flipped[len(good) // 3] ^= 1
reasons = []
for bad in (bytes(flipped), good[:-7], b"garbage" * 20, good[:100]):
    try:
        read_checkpoint(bad)
    except CheckpointError as e:
        reasons.append(str(e))
assert read_checkpoint(good)["a/kernel"].shape == (64, 32)
print(len(reasons), "tensorflow" in sys.modules)
print(reasons[0])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    count, imported = out.stdout.split("\n")[0].split()
    assert count == "4" and imported == "False"
    assert "crc32c" in out.stdout


def test_scratch_folders_of_processes_that_are_gone_are_removed_by_the_next_process():
    """Ray kills hosts without their cleanup: the scratch folder a killed process made on tmpfs is
    removed by the first scratch folder the next process makes; a live process's folder, and a
    folder that is not a scratch folder, stay."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from fedsim.checkpoint import remove_orphans, scratch_base, scratch_dir

    def in_a_process(code: str) -> Path:
        ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        return Path(ran.stdout.strip())

    killed = in_a_process(
        "import os; from fedsim.checkpoint import scratch_dir; p = scratch_dir('fedsim-host0-'); "
        "(p / 'device.ckpt').write_bytes(b'x'); print(p); os._exit(0)"
    )
    assert killed.is_dir()
    live = scratch_dir("fedsim-host1-")
    assert str(os.getpid()) in live.name
    other = killed.parent / "fedsim-t-0"
    other.mkdir(exist_ok=True)
    try:
        fresh = in_a_process("from fedsim.checkpoint import scratch_dir; print(scratch_dir('fedsim-coordinator-'))")
        assert not killed.exists()  # the next process's first scratch folder removed it
        assert live.is_dir() and other.is_dir()
        assert fresh.is_dir()  # its own process exited without cleanup: the next sweep takes it
        assert remove_orphans(scratch_base()) >= 1 and not fresh.exists()
    finally:
        shutil.rmtree(live, ignore_errors=True)
