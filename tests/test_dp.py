"""Central DP (DP-FedAvg) as a pipeline stage: the noise is what is claimed, after clipping; the
epsilon recorded is what dp-accounting computes for the same mechanism; budgets, resumes, refusals."""

import json

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from fakes import FakeEngine, StopAt, make_coordinator

import fedsim
from fedsim.checkpoint import flatten, read_checkpoint, spec_of
from fedsim.experiment.config import Config, ConfigError
from fedsim.loop.coordinator import select_devices
from fedsim.pipeline.accounting import Accountant


class Rows:
    def __init__(self):
        self.rounds, self.checkpoints = [], []

    def record_round(self, round_row, device_rows, checkpoint, state=None, files=None):
        self.rounds.append(round_row)
        self.checkpoints.append(checkpoint)

    def hold_round(self, round_row, device_rows):  # a round between commits (--commit-every)
        self.rounds.append(round_row)


def weights_of(checkpoint):
    w = read_checkpoint(checkpoint)
    return flatten(w, spec_of(w)).astype(np.float64)


def test_the_noise_has_the_predicted_std_and_comes_after_clipping():
    """Device d uploads the global weights + d on 9 weights (update norm 3d). With C = 6, devices 0-2
    pass whole (norms 0, 3, 6) and 3-9 are clipped to norm 6 (+2 per weight): the clipped mean moves
    each weight by (0 + 1 + 2 + 7 * 2) / 10 = 1.7. The noise on that mean has std z * C / m = 0.6."""
    config = Config(
        devices=10, rounds=200, dp_clip=6.0, dp_noise_multiplier=1.0, dataset="toy_images", seed=3, commit_every="1"
    )  # every round's checkpoint recorded
    rec = Rows()
    make_coordinator(config, recorder=rec).run()
    steps = np.diff(np.stack([np.zeros(9)] + [weights_of(c) for c in rec.checkpoints]), axis=0)
    deviation = (steps - 1.7).ravel()  # 1,800 draws
    # the sample std of 1,800 normal draws is within 6.5% of the true one with probability > 0.997
    assert abs(deviation.std() / 0.6 - 1) < 0.065, deviation.std()
    assert abs(deviation.mean()) < 4 * 0.6 / np.sqrt(len(deviation))  # centred on the clipped mean
    assert all(r["dp_noise_std"] == pytest.approx(0.6) and r["dp_clip"] == 6.0 for r in rec.rounds)


def test_without_noise_the_mean_is_the_clipped_mean_exactly():
    config = Config(devices=10, rounds=1, dp_clip=6.0, dp_noise_multiplier=0.0, dataset="toy_images")
    rec = Rows()
    make_coordinator(config, recorder=rec).run()
    np.testing.assert_allclose(weights_of(rec.checkpoints[0]), np.full(9, 1.7), rtol=1e-6)
    assert rec.rounds[0]["dp_epsilon"] == np.inf


def direct_epsilon(kind, sampling, population, cohort, z, delta, rounds):
    """What dp-accounting says for the same mechanism, built here without fedsim."""
    if sampling == "poisson":
        event = dpa.PoissonSampledDpEvent(cohort / population, dpa.GaussianDpEvent(z))
        accountant = pld_privacy_accountant.PLDAccountant() if kind == "pld" else rdp_privacy_accountant.RdpAccountant()
    else:  # replace-one neighbours: the sum's sensitivity is 2C, the multiplier z / 2
        event = dpa.SampledWithoutReplacementDpEvent(population, cohort, dpa.GaussianDpEvent(z / 2))
        accountant = rdp_privacy_accountant.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    accountant.compose(event, rounds)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("kind, sampling", [("rdp", "fixed"), ("rdp", "poisson"), ("pld", "poisson")])
def test_the_recorded_epsilon_is_dp_accountings(kind, sampling):
    config = Config(
        devices=40,
        per_round=8,
        rounds=3,
        dp_clip=1.0,
        dp_noise_multiplier=1.3,
        dp_delta=1e-4,
        dp_accountant=kind,
        sampling=sampling,
        dataset="toy_images",
    )
    rec = Rows()
    make_coordinator(config, engine=FakeEngine(40), recorder=rec).run()
    for r in rec.rounds:
        expected = direct_epsilon(kind, sampling, 40, 8, 1.3, 1e-4, r["round"])
        assert r["dp_epsilon"] == pytest.approx(expected, rel=1e-9)
    assert rec.rounds[0]["dp_epsilon"] < rec.rounds[-1]["dp_epsilon"]


def test_a_target_epsilon_is_met_within_five_percent():
    for target in (1.0, 4.0):
        a = Accountant("rdp", 6000, 100, "poisson", 0.0, 6000**-1.1).calibrated(target, 200)
        final = a.epsilon(200)
        assert 0.95 * target <= final <= target, (target, final)
    config = Config(devices=40, per_round=8, rounds=5, dp_clip=1.0, dp_epsilon=3.0, dataset="toy_images")
    rec = Rows()
    make_coordinator(config, engine=FakeEngine(40), recorder=rec).run()
    assert 0.95 * 3.0 <= rec.rounds[-1]["dp_epsilon"] <= 3.0


def test_the_noise_cohort_shrinks_the_noise_and_is_what_the_accountant_assumes():
    config = Config(
        devices=40,
        per_round=8,
        rounds=2,
        dp_clip=1.0,
        dp_noise_multiplier=1.0,
        dp_noise_cohort=32,
        dataset="toy_images",
    )
    rec = Rows()
    coordinator = make_coordinator(config, engine=FakeEngine(40), recorder=rec)
    coordinator.run()
    assert rec.rounds[0]["dp_noise_std"] == pytest.approx(1.0 * 1.0 / 32)  # z C / M on the mean
    assert rec.rounds[1]["dp_epsilon"] == pytest.approx(direct_epsilon("rdp", "fixed", 40, 32, 1.0, 40**-1.1, 2))


def test_poisson_sampling_is_seeded_and_varies_in_size():
    sizes = [len(select_devices(1000, 100, 0, r, poisson=True)) for r in range(1, 51)]
    assert len(set(sizes)) > 5 and abs(np.mean(sizes) - 100) < 10
    assert select_devices(1000, 100, 0, 7, poisson=True) == select_devices(1000, 100, 0, 7, poisson=True)


def test_refusals_in_one_line():
    with pytest.raises(ConfigError, match="DP noise needs a clip norm: add --dp-clip C"):
        Config(dp_noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="--dp-noise-multiplier and --dp-epsilon both set the noise"):
        Config(dp_clip=1.0, dp_noise_multiplier=1.0, dp_epsilon=2.0)
    with pytest.raises(ConfigError, match="DP with --strategy fedmedian: the noise is added to the sum"):
        make_coordinator(
            Config(devices=4, dp_clip=1.0, dp_noise_multiplier=1.0, strategy="fedmedian", dataset="toy_images")
        )
    with pytest.raises(ConfigError, match="--dp-accountant pld accounts for Poisson sampling only"):
        make_coordinator(
            Config(devices=4, dp_clip=1.0, dp_noise_multiplier=1.0, dp_accountant="pld", dataset="toy_images")
        )


SETTINGS = dict(dataset="toy_images", toy_samples=20, devices=12, per_round=6, rounds=5, seed=4, progress=False)


COLUMNS = ["round", "test_accuracy", "test_loss", "train_loss", "samples", "bytes_up", "dp_epsilon", "dp_clip"]


def test_z_0_without_clipping_is_plain_fedavg_bit_for_bit(tmp_path):
    plain = fedsim.run(out=str(tmp_path / "plain"), engine=fedsim.LocalEngine(2), **SETTINGS)
    dp = fedsim.run(out=str(tmp_path / "dp"), engine=fedsim.LocalEngine(2), dp_noise_multiplier=0.0, **SETTINGS)
    columns = ["round", "test_accuracy", "test_loss", "train_loss", "samples", "bytes_up"]
    assert dp.rounds[columns].equals(plain.rounds[columns])
    assert (dp.path / "global.ckpt").read_bytes() == (plain.path / "global.ckpt").read_bytes()
    assert dp.meta["pipeline"] == ["verify", "dp"]


def test_dp_runs_the_same_on_any_host_count_and_resumes_its_accountant_and_clip(tmp_path):
    settings = {**SETTINGS, "dp_clip": 0.5, "dp_noise_multiplier": 0.4, "dp_clip_quantile": 0.5, "commit_every": "1"}
    one = fedsim.run(out=str(tmp_path / "one"), engine=fedsim.LocalEngine(1), **settings)
    three = fedsim.run(out=str(tmp_path / "three"), engine=fedsim.LocalEngine(3), **settings)
    assert three.rounds[COLUMNS].equals(one.rounds[COLUMNS])
    assert (three.path / "global.ckpt").read_bytes() == (one.path / "global.ckpt").read_bytes()
    assert one.rounds["dp_clip"].nunique() > 1  # adaptive clipping moved C
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAt(4), **settings)
    resumed = fedsim.resume(tmp_path / "cut", engine=fedsim.LocalEngine(2))
    assert resumed.rounds[COLUMNS].equals(one.rounds[COLUMNS])
    assert (resumed.path / "global.ckpt").read_bytes() == (one.path / "global.ckpt").read_bytes()


def test_a_spent_budget_stops_the_run_before_the_round_and_a_larger_one_resumes_it(tmp_path):
    settings = {**SETTINGS, "dp_clip": 0.5, "dp_noise_multiplier": 1.0, "commit_every": "1"}
    full = fedsim.run(out=str(tmp_path / "full"), engine=fedsim.LocalEngine(2), **settings)
    budget = float(full.rounds["dp_epsilon"].iloc[2]) + 1e-6  # enough for 3 rounds, not for 4
    cut = fedsim.run(out=str(tmp_path / "cut"), engine=fedsim.LocalEngine(2), dp_epsilon_budget=budget, **settings)
    meta = json.loads((cut.path / "config.json").read_text())
    assert (
        meta["status"] == "budget" and meta["rounds_completed"] == 3 and "round 4 would take epsilon" in meta["stopped"]
    )
    assert cut.rounds["dp_epsilon"].max() <= budget
    resumed = fedsim.resume(cut.path, engine=fedsim.LocalEngine(2), dp_epsilon_budget=100.0)
    assert resumed.meta["status"] == "completed"
    assert resumed.rounds[COLUMNS].equals(full.rounds[COLUMNS])
