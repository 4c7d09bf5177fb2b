"""The round loop over the real hosts and upload pipeline, with a stand-in interpreter at the device
boundary (tests/fakes.py): real checkpoint bytes, no model, no Ray. Device d holds d + 1 samples and
uploads the global weights + d."""

import numpy as np
import pytest
from fakes import FakeEngine, make_coordinator

from fedsim.checkpoint import read_checkpoint, write_checkpoint
from fedsim.experiment.config import Config
from fedsim.loop.coordinator import RoundFailedError, select_devices
from fedsim.strategies import FedAvg


class Recorded:
    def __init__(self):
        self.rounds, self.devices, self.checkpoints = [], [], []

    def record_round(self, round_row, device_rows, global_checkpoint, state=None, files=None):
        self.rounds.append(round_row)
        self.devices.extend(device_rows)
        self.checkpoints.append(global_checkpoint)

    def hold_round(self, round_row, device_rows):  # a round between commits (--commit-every)
        self.rounds.append(round_row)
        self.devices.extend(device_rows)


class FedAvgOfRows(FedAvg):
    """FedAvg from every update's vector (the path order statistics take) instead of a running sum."""

    accumulate = "stack"


def make(config, engine=None, recorder=None, strategy=None):
    return make_coordinator(config, engine, recorder, strategy)


@pytest.mark.parametrize("strategy", [FedAvg(), FedAvgOfRows()], ids=["sum", "stack"])
def test_rounds_aggregate_sample_weighted_and_record_everything(strategy):
    rec = Recorded()
    coord = make(Config(devices=3, rounds=2, dataset="toy_images", commit_every="1"), None, rec, strategy)
    coord.run()
    # round 1: device d sends 0 + d with weight d + 1 -> (0*1 + 1*2 + 2*3) / 6 = 8/6
    # round 2: from g1 each sends g1 + d -> g1 + 8/6
    np.testing.assert_allclose(read_checkpoint(rec.checkpoints[0])["a/bias"], np.full(3, 8 / 6), rtol=1e-6)
    np.testing.assert_allclose(coord.global_weights["a/kernel"], np.full((2, 3), 16 / 6), rtol=1e-6)
    assert [r["round"] for r in rec.rounds] == [1, 2]
    assert rec.rounds[0]["devices_selected"] == 3 and rec.rounds[0]["devices_accepted"] == 3
    assert rec.rounds[0]["samples"] == 6
    assert len(rec.devices) == 6 and {r["status"] for r in rec.devices} == {"ok"}
    assert rec.rounds[1]["bytes_down"] == 3 * len(rec.checkpoints[0])


@pytest.mark.parametrize("strategy", [FedAvg(), FedAvgOfRows()], ids=["sum", "stack"])
def test_bad_checkpoints_are_rejected_recorded_and_never_averaged(strategy):
    def nan(g):
        return write_checkpoint({k: np.full_like(v, np.nan) for k, v in g.items()})

    def wrong_shape(g):
        return write_checkpoint({"a/kernel": np.zeros((3, 2), np.float32), "a/bias": g["a/bias"]})

    def truncated(g):
        return write_checkpoint(g)[:100]

    def foreign(g):
        return write_checkpoint({"other/w": np.ones(4, np.float32)})

    spoil = {1: nan, 2: wrong_shape, 3: truncated, 4: foreign}
    rec = Recorded()
    coord = make(Config(devices=6, rounds=1, dataset="toy_images"), FakeEngine(6, spoil=spoil), rec, strategy)
    coord.run()
    status = {r["device_id"]: (r["status"], r["reason"]) for r in rec.devices}
    assert status[0][0] == "ok" and status[5][0] == "ok"
    assert status[1][0] == "rejected" and "holds NaN or Inf" in status[1][1]
    assert status[2][0] == "rejected" and "expected float32[2, 3]" in status[2][1]
    assert status[3][0] == "rejected" and "not a readable TF v1 checkpoint" in status[3][1]
    assert status[4][0] == "rejected" and "missing weight" in status[4][1]
    # only devices 0 (weight 1, +0) and 5 (weight 6, +5) are averaged: 30 / 7
    np.testing.assert_allclose(coord.global_weights["a/bias"], np.full(3, 30 / 7), rtol=1e-6)
    assert np.all(np.isfinite(coord.global_weights["a/kernel"]))
    assert rec.rounds[0]["devices_accepted"] == 2 and rec.rounds[0]["devices_reported"] == 6


def test_a_round_with_no_good_update_keeps_the_global_model():
    rec = Recorded()
    coord = make(
        Config(devices=2, rounds=1, dataset="toy_images"),
        FakeEngine(2, spoil={0: lambda g: b"x", 1: lambda g: b""}),
        rec,
    )
    coord.run()
    np.testing.assert_array_equal(coord.global_weights["a/bias"], np.zeros(3))
    assert rec.rounds[0]["devices_accepted"] == 0 and np.isnan(rec.rounds[0]["train_loss"])


def test_fraction_selects_a_seeded_subset_each_round():
    engine = FakeEngine(20)
    make(Config(devices=20, rounds=3, fraction=0.25, dataset="toy_images"), engine).run()
    assert all(len(c) == 5 for c in engine.calls)
    assert len({tuple(c) for c in engine.calls}) > 1
    assert select_devices(20, 5, 0, 2) == engine.calls[1]
    assert select_devices(20, 5, 1, 2) != select_devices(20, 5, 0, 2)


@pytest.mark.parametrize("n", [1, 7])
def test_selecting_everyone(n):
    assert select_devices(n, n, 0, 1) == list(range(n))


def test_too_few_reports_are_retried_once():
    engine = FakeEngine(4, down=1)
    rec = Recorded()
    make(Config(devices=4, rounds=1, dataset="toy_images", min_devices=3), engine, rec).run()
    assert len(engine.calls) == 2 and engine.calls[0] == engine.calls[1]  # the same selection, again
    assert rec.rounds[0]["devices_reported"] == 4


def test_too_few_reports_twice_stop_the_run_with_the_rounds_before_kept():
    engine = FakeEngine(4, down=10)
    rec = Recorded()
    coord = make(Config(devices=4, rounds=3, dataset="toy_images", min_devices=2), engine, rec)
    engine.down = 0
    coord.run_round(1)  # a good round first
    engine.down, engine.calls = 10, []
    with pytest.raises(RoundFailedError, match="round 2: 0 of 4 selected devices reported, fewer than --min-devices 2"):
        coord.run_round(2)
    assert len(engine.calls) == 2
    assert [r["round"] for r in rec.rounds] == [1]


def test_update_norm_bounds_on_the_coordinator():
    # device d sends g + d on 9 weights: its update norm is 3d
    rec = Recorded()
    coord = make(Config(devices=4, rounds=1, dataset="toy_images", max_update_norm=7.0), None, rec)
    coord.run()
    status = {r["device_id"]: (r["status"], r["reason"]) for r in rec.devices}
    assert [status[d][0] for d in range(4)] == ["ok", "ok", "ok", "rejected"]  # norms 0, 3, 6, 9
    assert "update norm 9 exceeds --max-update-norm 7" in status[3][1]
    # FedAvg of devices 0..2 with weights 1, 2, 3: (0 + 2 + 6) / 6
    np.testing.assert_allclose(coord.global_weights["a/bias"], np.full(3, 8 / 6), rtol=1e-6)

    rec = Recorded()
    coord = make(Config(devices=4, rounds=1, dataset="toy_images", clip_update_norm=3.0), None, rec)
    coord.run()
    # every update is scaled to norm <= 3, i.e. each weight moves by at most 1: (0 + 1*2 + 1*3 + 1*4) / 10
    np.testing.assert_allclose(coord.global_weights["a/bias"], np.full(3, 0.9), rtol=1e-6)
    assert sum(r["reason"].startswith("clipped") for r in rec.devices) == 2
