"""--compress ternary (TernGrad): unbiased, two bits a value plus a float32 scale, in real runs."""

import numpy as np
import pytest

import fedsim
from fedsim.pipeline.encodings.ternary import deternarise, ternarise


def test_ternary_values_are_the_scale_times_a_sign_or_zero():
    update = np.array([0.5, -2.0, 0.0, 1.0, -0.25], np.float32)
    payload = ternarise(update, np.full(5, 0.1, np.float32))  # keep where 0.1 * 2 < |u|: all but 0
    assert len(payload) == 4 + 2  # the scale, then 5 values at 2 bits in 2 bytes
    np.testing.assert_array_equal(deternarise(payload, 5), [2.0, -2.0, 0.0, 2.0, -2.0])
    never = ternarise(update, np.full(5, 0.99, np.float32))  # 0.99 * 2 < |u| only for -2.0
    np.testing.assert_array_equal(deternarise(never, 5, onto=np.ones(5, np.float32)), [1, -1, 1, 1, 1])


def test_ternary_is_unbiased():
    """The mean of 2,000 encodings is the update: each value's error is a mean of independent draws
    of spread at most s (the scale), so it stays under 5 standard errors of (s / 2) / sqrt(2000)."""
    rng = np.random.default_rng(11)
    update = (rng.standard_normal(300) * np.linspace(0.01, 1, 300)).astype(np.float32)
    trials = 2000
    total = np.zeros(len(update))
    for _ in range(trials):
        total += deternarise(ternarise(update, rng.random(len(update), np.float32)), len(update))
    scale = float(np.abs(update).max())
    error = total / trials - update
    assert np.abs(error).max() < 5 * (scale / 2) / np.sqrt(trials)
    one = deternarise(ternarise(update, rng.random(len(update), np.float32)), len(update))
    assert np.abs(one - update).max() > 5 * (scale / 2) / np.sqrt(trials)  # one encoding is coarse


def test_a_ternary_run_sends_two_bits_a_parameter_and_learns(tmp_path):
    settings = dict(dataset="toy_images", toy_samples=20, devices=6, rounds=3, seed=4, progress=False)
    run = fedsim.run(out=str(tmp_path / "t"), engine=fedsim.LocalEngine(2), compress="ternary", **settings)
    params = int(run.artifact["parameters"])
    expected = 4 + -(-2 * params // 8)
    assert set(run.devices["checkpoint_bytes"]) == {expected}
    assert run.rounds["bytes_up"].tolist() == [6 * expected] * 3
    assert run.rounds["test_accuracy"].iloc[-1] > 0.3  # 10 classes: it learns through the coarse channel
    with pytest.raises(fedsim.ConfigError, match="--rotate applies to --compress q8, q4, q2 or q1"):
        fedsim.Config(compress="ternary", rotate=True)
