import numpy as np
import pytest

from fedsim.checkpoint import CheckpointError, check_weights, read_checkpoint, spec_of, write_checkpoint


def test_write_then_read_round_trips(weights_like, shm_scratch):
    w = weights_like(1.5)
    back = read_checkpoint(write_checkpoint(w, shm_scratch), shm_scratch)
    assert set(back) == set(w)
    for k in w:
        np.testing.assert_array_equal(back[k], w[k])


def test_written_checkpoint_restores_through_the_restore_signature(runner, shm_scratch):
    initial = runner.initial_checkpoint(shm_scratch)
    weights = {k: v + 1.0 for k, v in read_checkpoint(initial, shm_scratch).items()}
    path = shm_scratch / "g.ckpt"
    path.write_bytes(write_checkpoint(weights, shm_scratch))
    restored = runner.restore(path)
    for k in weights:
        np.testing.assert_array_equal(restored[k], weights[k])


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
