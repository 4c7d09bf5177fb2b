"""Secure aggregation: the modular arithmetic (quantisation error, wrap-around), the threshold of
survivors, the bytes and seconds of the protocol by hand; and local DP's noise."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from fakes import make_coordinator
from test_dp import Rows, weights_of

import fedsim
from fedsim.experiment.config import Config, ConfigError
from fedsim.pipeline.secagg import ID, KEY, SHARE, SHARE_PAIR


def fedavg_of_fakes(n):
    """Device d uploads the global weights + d with weight d + 1: FedAvg moves each weight by this."""
    d = np.arange(n)
    return float(((d + 1) * d).sum() / (d + 1).sum())


@pytest.mark.parametrize("bits", [22, 10])
def test_the_secure_sum_gives_fedavg_within_the_quantisation_error(bits):
    n, clip = 10, 16.0
    config = Config(devices=n, rounds=1, secagg="secagg", secagg_bits=bits, secagg_clip=clip, dataset="toy_images")
    rec = Rows()
    make_coordinator(config, recorder=rec).run()
    got = weights_of(rec.checkpoints[0])
    exact = fedavg_of_fakes(n)
    # every value (each weighted update r_i d and each r_i) is off by less than one quantum 2R / (2^b - 1)
    quantum = 2 * clip / (2**bits - 1)
    weight = sum((d + 1) / n for d in range(n))  # sum of r_i = c_i / c_max
    bound = n * quantum * (1 + exact) / (weight - n * quantum)
    assert np.all(np.abs(got - exact) <= bound), (got, exact, bound)
    assert rec.rounds[0]["secagg_failed"] == 0 and rec.rounds[0]["secagg_survivors"] == n
    if bits == 10:
        assert np.abs(got - exact).max() > 1e-4  # the coarse quantiser's error shows


def test_a_small_modulus_wraps_the_sum_around():
    """10 devices of 2^12 - 1 levels each can reach 40,950 > 2^14: the sum wraps modulo 2^14."""
    config = Config(
        devices=10,
        rounds=1,
        secagg="secagg",
        secagg_bits=12,
        secagg_modulus_bits=14,
        secagg_clip=16.0,
        dataset="toy_images",
    )
    rec = Rows()
    make_coordinator(config, recorder=rec).run()
    got = weights_of(rec.checkpoints[0])
    wrapped = rec.rounds[0]["secagg_failed"] == 1 or np.abs(got - fedavg_of_fakes(10)).max() > 1.0
    assert wrapped


def test_secagg_refuses_what_needs_each_update():
    for settings, message in (
        (dict(strategy="fedmedian"), "--secagg with --strategy fedmedian: the server learns only the sum"),
        (dict(compress="bf16"), "--compress with --secagg"),
        (dict(max_update_norm=3.0), "with --secagg: the server sees only the sum"),
        (dict(byzantine=0.25, attack="alie"), "secure aggregation sums the updates"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_coordinator(Config(devices=8, secagg="secagg", dataset="toy_images", **settings))


SETTINGS = dict(dataset="toy_images", toy_samples=20, devices=4, rounds=2, seed=2, progress=False)


def test_the_protocols_bytes_and_seconds_by_hand(tmp_path):
    """A cohort of 4 on the uniform fleet (speed 1, 20,000 kbit/s down, 5,000 up): each device's
    extra bytes and seconds follow the formulas in fedsim/pipeline/secagg.py."""
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps({"restore": 1.0, "train": 0.5, "save": 2.0}))
    plain = fedsim.run(
        out=str(tmp_path / "plain"), engine=fedsim.LocalEngine(), fleet="uniform", latency=str(latency), **SETTINGS
    )
    sa = fedsim.run(
        out=str(tmp_path / "sa"),
        engine=fedsim.LocalEngine(),
        fleet="uniform",
        latency=str(latency),
        secagg="secagg",
        secagg_rtt_ms=80.0,
        **SETTINGS,
    )
    params = int(sa.artifact["parameters"])
    k = 3  # every other device of the cohort of 4
    up = (params + 1) * 4 + 2 * KEY + k * SHARE_PAIR + k * SHARE
    down_extra = k * (2 * KEY + ID) + k * SHARE_PAIR + k * ID
    first = sa.rounds.iloc[0]
    assert first["bytes_up"] == 4 * up
    assert first["bytes_down"] == plain.rounds.iloc[0]["bytes_down"] + 4 * down_extra
    stages = sa.meta["stages"]["secagg"]
    extra_compute = k * stages["key_agreement_ms"] / 1e3 + (k + 1) * stages["mask_ms"] / 1e3
    extra_comm = 8 * down_extra / (1000 * 20_000) + 8 * (up - plain.devices["checkpoint_bytes"].iloc[0]) / (
        1000 * 5_000
    )
    both = pd.merge(plain.devices, sa.devices, on=["round", "device_id"], suffixes=("_plain", "_sa"))
    np.testing.assert_allclose(both["sim_compute_s_sa"] - both["sim_compute_s_plain"], extra_compute, rtol=1e-9)
    np.testing.assert_allclose(both["sim_comm_s_sa"] - both["sim_comm_s_plain"], extra_comm + 3 * 0.080, rtol=1e-9)
    # the round ends with the server's unmasking: every survivor's self-mask (nobody dropped)
    assert sa.rounds["secagg_unmask_s"].iloc[0] == pytest.approx(4 * stages["mask_ms"] / 1e3)


def test_too_few_survivors_lose_the_round_and_the_model_is_kept(tmp_path):
    fleet = tmp_path / "fleet.csv"
    rows = [f"{d},1.0,20000,5000,1.0,{0.999 if d < 6 else 0.0}" for d in range(8)]  # 6 of 8 drop out
    fleet.write_text("device_id,speed,down_kbps,up_kbps,availability,dropout\n" + "\n".join(rows) + "\n")
    run = fedsim.run(
        out=str(tmp_path / "r"),
        engine=fedsim.LocalEngine(),
        fleet=str(fleet),
        secagg="secagg",
        **{**SETTINGS, "devices": 8},
    )
    assert (run.rounds["secagg_failed"] == 1).all() and (run.rounds["secagg_needed"] == 4).all()
    assert (run.rounds["secagg_survivors"] == 2).all()
    from fedsim.device import Runner

    initial = Runner((run.path / "model.tflite").read_bytes()).initial_checkpoint(run.path)
    np.testing.assert_array_equal(weights_of((run.path / "global.ckpt").read_bytes()), weights_of(initial))


def test_dp_with_secagg_is_the_same_on_any_host_count(tmp_path):
    settings = {**SETTINGS, "devices": 6, "secagg": "secaggplus", "dp_clip": 0.5, "dp_noise_multiplier": 0.3}
    one = fedsim.run(out=str(tmp_path / "one"), engine=fedsim.LocalEngine(1), **settings)
    three = fedsim.run(out=str(tmp_path / "three"), engine=fedsim.LocalEngine(3), **settings)
    columns = ["round", "test_accuracy", "test_loss", "bytes_up", "dp_epsilon", "secagg_survivors"]
    assert three.rounds[columns].equals(one.rounds[columns])
    assert (three.path / "global.ckpt").read_bytes() == (one.path / "global.ckpt").read_bytes()


def test_local_dp_adds_the_calibrated_noise_on_each_device():
    from fedsim.pipeline.ldp import gaussian_multiplier

    z = gaussian_multiplier(2.0, 1e-5)
    assert 1.5 < z < 3.0  # one Gaussian release at epsilon 2, delta 1e-5 (analytic Gaussian: about 2.1)
    config = Config(devices=10, rounds=50, ldp_epsilon=2.0, ldp_clip=1.0, dataset="toy_images", commit_every="1")
    rec = Rows()
    make_coordinator(config, recorder=rec).run()
    # each device's update is clipped to norm 1 (+1/3 per weight for d >= 1) plus N(0, (2 z)^2): the
    # sample-weighted mean of 10 devices has noise of std 2 z sqrt(sum c_i^2) / sum c_i per weight
    c = np.arange(10) + 1.0
    std = 2 * z * math.sqrt((c**2).sum()) / c.sum()
    steps = np.diff(np.stack([np.zeros(9)] + [weights_of(ck) for ck in rec.checkpoints]), axis=0)
    clipped_mean = (c[1:] * (1 / 3)).sum() / c.sum()
    deviation = (steps - clipped_mean).ravel()
    assert abs(deviation.std() / std - 1) < 0.1 and rec.rounds[0]["ldp_noise_std"] == pytest.approx(2 * z)
