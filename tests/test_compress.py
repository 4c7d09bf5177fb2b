"""--compress bf16: the update rounded to bfloat16 on the device, two bytes a parameter on the wire."""

import numpy as np
import pytest

import fedsim
from fedsim.checkpoint import flatten, read_checkpoint, spec_of
from fedsim.config import Config, ConfigError
from fedsim.pipeline.compress import from_bfloat16, to_bfloat16


def test_bfloat16_rounds_to_nearest_even_and_keeps_the_exponent():
    x = np.array([1.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -2.5, 3.0e38, 1e-30, 0.0], np.float32)
    y = from_bfloat16(to_bfloat16(x))
    # 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: to the even mantissa (1); 1 + 3 * 2^-8 to 1 + 2^-6
    np.testing.assert_array_equal(y[:3], [1.0, 1.0, 1.0 + 2**-6])
    assert y[3] == -2.5 and np.isfinite(y[4]) and y[6] == 0.0
    rng = np.random.default_rng(0)
    z = rng.standard_normal(10000).astype(np.float32) * 10.0 ** rng.integers(-8, 8, 10000)
    rel = np.abs(from_bfloat16(to_bfloat16(z)) - z) / np.abs(z)
    assert rel.max() <= 2**-8  # half a unit in the last of bfloat16's 8 significant bits
    assert to_bfloat16(z).nbytes == 2 * z.size


def test_compress_is_a_checked_setting():
    assert Config(compress="bf16").compress == "bf16"
    with pytest.raises(ConfigError, match="--compress must be one of none, bf16"):
        Config(compress="gzip")


@pytest.fixture(scope="module")
def one_device_runs(tmp_path_factory):
    """One device, one round, uncompressed and bf16: the new global model is that device's upload."""
    root = tmp_path_factory.mktemp("compress")
    settings = dict(dataset="toy_images", toy_samples=10, devices=1, rounds=1, seed=2, fleet="uniform", progress=False)
    runs = {}
    for method in ("none", "bf16"):
        runs[method] = fedsim.run(out=str(root / method), engine=fedsim.LocalEngine(), compress=method, **settings)
    return runs


def test_bf16_uploads_the_update_rounded_and_half_the_bytes(one_device_runs):
    from fedsim.device import Runner

    plain, half = one_device_runs["none"], one_device_runs["bf16"]
    runner = Runner((plain.path / "model.tflite").read_bytes())
    initial = read_checkpoint(runner.initial_checkpoint(plain.path))
    spec = spec_of(initial)
    w0 = flatten(initial, spec).astype(np.float64)
    trained = flatten(read_checkpoint((plain.path / "global.ckpt").read_bytes()), spec)
    by_hand = (w0 + from_bfloat16(to_bfloat16((trained - w0).astype(np.float32)))).astype(np.float32)
    got = flatten(read_checkpoint((half.path / "global.ckpt").read_bytes()), spec)
    np.testing.assert_array_equal(got, by_hand)
    params = int(half.artifact["parameters"])
    assert half.devices["checkpoint_bytes"].tolist() == [2 * params]
    assert half.rounds["bytes_up"].tolist() == [2 * params]
    assert plain.devices["checkpoint_bytes"].iloc[0] > 2 * params  # the saved TF v1 checkpoint: 4 bytes each, more
    assert half.meta["pipeline"] == ["verify", "compress"]


def test_bf16_halves_the_upload_on_the_simulated_clock(one_device_runs):
    """The uniform fleet uploads at 5,000 kbit/s: the upload's seconds follow its bytes."""
    plain, half = one_device_runs["none"], one_device_runs["bf16"]
    down = 8 * plain.rounds["bytes_down"].iloc[0] / (1000 * 20_000)

    def upload_s(run):
        return run.devices["sim_comm_s"].iloc[0] - down

    assert upload_s(half) == pytest.approx(8 * half.devices["checkpoint_bytes"].iloc[0] / (1000 * 5_000))
    assert upload_s(plain) == pytest.approx(8 * plain.devices["checkpoint_bytes"].iloc[0] / (1000 * 5_000))
