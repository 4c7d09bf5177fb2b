"""Device profiles and the simulated clock: hand calculations, round policies, bad fleet input, and
runs whose simulated times do not depend on hosts or engine."""

import json

import numpy as np
import pandas as pd
import pytest

import fedsim
from fedsim.clock import FLEETS, Clock, FleetError
from fedsim.clock.profiles import frame, load_csv, load_fleet
from fedsim.experiment.config import Config, ConfigError

LATENCY = {"restore": 2.0, "train": 1.0, "save": 3.0}


def clock(profiles, **policy):
    return Clock(profiles, LATENCY, batch_size=32, local_epochs=1, seed=0, **policy)


def one(speed=0.5, down=8000.0, up=2000.0, availability=1.0, dropout=0.0, n=1):
    return frame(
        np.arange(n), np.full(n, speed), np.full(n, down), np.full(n, up), np.full(n, availability), np.full(n, dropout)
    )


def test_one_devices_simulated_time_by_hand():
    # 100 samples, batch 32: 4 steps. compute = (2 + 4 * 1 + 3) ms / 0.5 = 18 ms
    # down: 8 * 400000 bits / 8000 kbit/s = 0.4 s; up: 8 * 410000 / 2000 kbit/s = 1.64 s
    outcomes, length = clock(one()).plan(1, [0], np.array([100]), 1, 400_000, 410_000)
    o = outcomes[0]
    assert o.status == "run" and o.steps is None
    assert o.compute_s == pytest.approx(0.018)
    assert o.comm_s == pytest.approx(0.4 + 1.64)
    assert o.finish_s == pytest.approx(2.058) and length == pytest.approx(2.058)


def test_deadline_drops_or_truncates_a_straggler():
    profiles = frame(np.arange(2), np.array([1.0, 0.01]), np.full(2, 1e6), np.full(2, 1e6), np.ones(2), np.zeros(2))
    samples = np.array([320, 320])  # 10 steps each: 15 ms at speed 1; 1.5 s at speed 0.01
    outcomes, length = clock(profiles, deadline=1.0).plan(1, [0, 1], samples, 2, 0, 0)
    assert outcomes[0].status == "run" and outcomes[1].status == "straggler"
    assert length == 1.0  # the server waited until the deadline for device 1
    outcomes, length = clock(profiles, deadline=1.0, straggler="partial").plan(1, [0, 1], samples, 2, 0, 0)
    # device 1: (1.0 s - 5 ms / 0.01) / (1 ms / 0.01) = 5 steps fit
    assert outcomes[1].status == "run" and outcomes[1].steps == 5
    assert outcomes[1].finish_s == pytest.approx((2 + 5 + 3) / 1000 / 0.01)
    assert length == pytest.approx(1.0)


def test_over_selection_keeps_the_first_to_finish():
    speeds = np.array([0.1, 1.0, 0.5, 2.0])
    profiles = frame(np.arange(4), speeds, np.full(4, 1e6), np.full(4, 1e6), np.ones(4), np.zeros(4))
    outcomes, length = clock(profiles).plan(1, [0, 1, 2, 3], np.full(4, 64), 2, 0, 0)
    assert {d for d, o in outcomes.items() if o.status == "run"} == {1, 3}  # the two fastest
    assert outcomes[0].status == outcomes[2].status == "straggler"
    assert length == pytest.approx((2 + 2 + 3) / 1000 / 1.0)


def test_dropout_and_availability_are_seeded_draws():
    c = clock(one(availability=0.5, dropout=0.3, n=2000))
    available = c.available(3)
    assert 0.45 < available.mean() < 0.55 and np.array_equal(available, c.available(3))
    assert not np.array_equal(available, c.available(4))
    outcomes, _ = c.plan(3, list(range(2000)), np.full(2000, 32), 2000, 0, 0)
    dropped = sum(o.status == "dropped" for o in outcomes.values())
    assert 0.25 < dropped / 2000 < 0.35
    assert all(np.isnan(o.finish_s) for o in outcomes.values() if o.status == "dropped")


def test_built_in_fleets_are_seeded_and_valid():
    a, b = load_fleet("phones", 500, 1), load_fleet("phones", 500, 1)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(load_fleet("phones", 500, 2))
    assert (a["speed"] > 0).all() and (a["dropout"] == FLEETS["phones"].dropout).all()
    skewed = load_fleet("skewed", 2000, 0)
    assert skewed["speed"].quantile(0.05) < a["speed"].quantile(0.05)


def test_bad_fleet_files_get_one_line_each(tmp_path):
    f = tmp_path / "fleet.csv"
    good = one(n=3)
    good.drop(columns="dropout").to_csv(f, index=False)
    with pytest.raises(FleetError, match="missing column\\(s\\) dropout"):
        load_csv(f, 3)
    good.assign(device_id=[0, 1, 7]).to_csv(f, index=False)
    with pytest.raises(FleetError, match="unknown device id\\(s\\) 7 \\(the fleet has devices 0-2\\)"):
        load_csv(f, 3)
    good.iloc[:2].to_csv(f, index=False)
    with pytest.raises(FleetError, match="no row for device\\(s\\) 2 of 3"):
        load_csv(f, 3)
    good.assign(speed=[1.0, 0.0, 1.0]).to_csv(f, index=False)
    with pytest.raises(FleetError, match=r"speed must be a number from 1e-06 to 1e\+06; device\(s\) 1 have 0.0"):
        load_csv(f, 3)
    good.assign(up_kbps=[1.0, -2.0, 1.0]).to_csv(f, index=False)
    with pytest.raises(FleetError, match="up_kbps must be a number from 0.001 to 1e"):
        load_csv(f, 3)
    good.assign(speed=[1.0, 1e-320, 1.0]).to_csv(f, index=False)  # would make simulated time infinite
    with pytest.raises(FleetError, match="speed must be a number from 1e-06"):
        load_csv(f, 3)
    good.to_csv(f, index=False)
    assert load_csv(f, 3).equals(good)


def test_bad_policy_settings_get_one_line_each(tmp_path):
    with pytest.raises(ConfigError, match="--over-select must be at least 1"):
        Config(fleet="phones", over_select=0.5)
    with pytest.raises(ConfigError, match="--deadline needs --fleet"):
        Config(deadline=10.0)
    with pytest.raises(ConfigError, match="--straggler partial needs --deadline"):
        Config(fleet="phones", straggler="partial")
    with pytest.raises(ConfigError, match="--fleet must be one of phones"):
        Config(fleet="tablets")
    with pytest.raises(ConfigError, match="no such file"):
        Config(fleet=str(tmp_path / "nope.csv"))
    bad = tmp_path / "lat.json"
    bad.write_text(json.dumps({"restore": 1, "train": 0, "save": 1}))
    with pytest.raises(ConfigError, match="train must be a positive number of ms"):
        Config(fleet="phones", latency=str(bad))


RUN = dict(
    dataset="toy_images",
    toy_samples=30,
    devices=8,
    rounds=3,
    seed=1,
    progress=False,
    fleet="phones",
    fraction=0.5,
    over_select=1.5,
    deadline=30.0,
)
SIM_DEVICE = ["round", "device_id", "status", "samples", "sim_compute_s", "sim_comm_s", "sim_finish_s"]
SIM_ROUND = ["round", "sim_round_s", "sim_elapsed_s", "devices_selected", "devices_accepted"]


@pytest.fixture
def pinned(tmp_path):
    path = tmp_path / "latency.json"
    path.write_text(json.dumps({"restore": 0.2, "train": 0.5, "save": 0.3}))
    return str(path)


def test_simulated_times_do_not_depend_on_hosts(tmp_path, pinned):
    one_host = fedsim.run(out=str(tmp_path / "a"), engine=fedsim.LocalEngine(1), latency=pinned, **RUN)
    three = fedsim.run(out=str(tmp_path / "b"), engine=fedsim.LocalEngine(3), latency=pinned, **RUN)
    pd.testing.assert_frame_equal(one_host.devices[SIM_DEVICE], three.devices[SIM_DEVICE])
    pd.testing.assert_frame_equal(one_host.rounds[SIM_ROUND], three.rounds[SIM_ROUND])
    assert one_host.rounds["sim_elapsed_s"].is_monotonic_increasing
    fleet = pd.read_parquet(one_host.path / "fleet.parquet")
    assert len(fleet) == 8 and set(fleet.columns) >= {"speed", "down_kbps", "up_kbps", "availability", "dropout"}
    assert one_host.meta["sim_latency_ms"] == {"restore": 0.2, "train": 0.5, "save": 0.3}
    # every selected device has a simulated time; devices decided before running did no host work
    picked = one_host.devices
    assert picked["sim_compute_s"].notna().all()
    assert (picked.loc[picked["status"] != "ok", "train_s"].isna()).all()
    # report and plot read the simulated clock
    from fedsim.report.analysis import plot, summary

    table = summary(tmp_path)
    assert {"sim_hours", "sim_h_to_0.75", "sim_h_to_0.80"} <= set(table.columns)
    assert table["sim_hours"].iloc[0] == pytest.approx(one_host.rounds["sim_elapsed_s"].iloc[-1] / 3600)
    assert any(p.name == "accuracy_sim_time.png" for p in plot(tmp_path, tmp_path / "plots"))


def test_a_deadline_no_device_can_meet_is_refused_before_the_first_round(tmp_path, pinned):
    with pytest.raises(FleetError, match="--deadline 0.001 s is shorter than any device could meet"):
        fedsim.run(out=str(tmp_path / "x"), engine=fedsim.LocalEngine(1), latency=pinned, **{**RUN, "deadline": 0.001})
    assert not (tmp_path / "x").exists()


def test_fedscale_trace_files_load_in_their_format(tmp_path):
    """FedScale's client_device_capacity ({client: {'computation', 'communication'}}) and
    client_behave_trace ({client: {'active', 'inactive', 'finish_time'}}), written here in that format."""
    import pickle

    capacity = {
        7: {"computation": 100.0, "communication": 4000.0},
        9: {"computation": 50.0, "communication": 800.0},
        11: {"computation": 200.0, "communication": 20000.0},
    }
    behave = {1: {"active": [0, 600], "inactive": [300, 900], "finish_time": 1200, "duration": 1200, "model": "x"}}
    (tmp_path / "cap").write_bytes(pickle.dumps(capacity))
    (tmp_path / "behave").write_bytes(pickle.dumps(behave))
    table = load_fleet(f"fedscale:{tmp_path / 'cap'},{tmp_path / 'behave'}", 50, 0)
    assert len(table) == 50
    # speed = median computation (100) / the device's own; bandwidth both ways from the trace
    assert set(np.round(table["speed"], 6)) <= {1.0, 2.0, 0.5}
    assert set(table["down_kbps"]) <= {4000.0, 800.0, 20000.0} and (table["down_kbps"] == table["up_kbps"]).all()
    # active 0-300 and 600-900 of 1200 s: half the time
    np.testing.assert_allclose(table["availability"], 0.5)
    (tmp_path / "bad").write_bytes(pickle.dumps({1: {"speed": 3}}))
    with pytest.raises(FleetError, match="entries need 'computation' and 'communication'"):
        load_fleet(f"fedscale:{tmp_path / 'bad'}", 5, 0)
