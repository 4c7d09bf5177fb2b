"""Each phone's energy: the formula of fedsim.clock.energy, reproduced by hand for one device."""

import json

import numpy as np
import pytest

import fedsim
from fedsim.clock.profiles import FleetError

SETTINGS = dict(dataset="toy_images", toy_samples=20, devices=2, rounds=2, seed=1, batch_size=8, progress=False)


def by_hand(compute_s, watts, down_bytes, up_bytes, down_kbps, up_kbps):
    """Huang et al. 2012's LTE model as their paper writes it, in mW and Mbit/s."""
    down_s = 8 * down_bytes / (down_kbps * 1000)
    up_s = 8 * up_bytes / (up_kbps * 1000)
    radio_mj = (51.97 * down_kbps / 1000 + 1288.04) * down_s + (438.39 * up_kbps / 1000 + 1288.04) * up_s
    tail_mj = 1060 * 11.576
    return watts * compute_s + (radio_mj + tail_mj) / 1000


def test_a_devices_energy_is_the_formula_by_hand(tmp_path):
    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps({"restore": 3.0, "train": 2.0, "save": 5.0}))
    fleet = tmp_path / "fleet.csv"
    fleet.write_text(
        "device_id,speed,down_kbps,up_kbps,availability,dropout,compute_w\n"
        "0,0.5,10000,2000,1.0,0.0,3.5\n"
        "1,2.0,40000,8000,1.0,0.0,1.5\n"
    )
    run = fedsim.run(
        out=str(tmp_path / "r"), engine=fedsim.LocalEngine(), fleet=str(fleet), latency=str(latency), **SETTINGS
    )
    devices = run.devices
    sent = run.rounds["bytes_down"].iloc[0] / 2  # each of the two devices downloaded the same checkpoint
    for d, speed, watts, down, up in ((0, 0.5, 3.5, 10000, 2000), (1, 2.0, 1.5, 40000, 8000)):
        row = devices[(devices["round"] == 1) & (devices["device_id"] == d)].iloc[0]
        steps = int(np.ceil(row["samples"] / 8))  # one local epoch, batch 8
        compute_s = (3.0 + steps * 2.0 + 5.0) / 1000 / speed
        assert row["sim_compute_s"] == pytest.approx(compute_s)
        assert row["sim_energy_j"] == pytest.approx(by_hand(compute_s, watts, sent, row["checkpoint_bytes"], down, up))
    first = devices[devices["round"] == 1]["sim_energy_j"].sum()
    assert run.rounds["sim_energy_j"].iloc[0] == pytest.approx(first)


def test_built_in_fleets_use_the_stated_default_power(tmp_path):
    run = fedsim.run(out=str(tmp_path / "r"), engine=fedsim.LocalEngine(), fleet="uniform", **SETTINGS)
    row = run.devices.iloc[0]
    sent = run.rounds["bytes_down"].iloc[0] / 2
    expected = by_hand(row["sim_compute_s"], 2.0, sent, row["checkpoint_bytes"], 20_000, 5_000)
    assert row["sim_energy_j"] == pytest.approx(expected)
    # no fleet, no clock: no energy
    plain = fedsim.run(out=str(tmp_path / "plain"), engine=fedsim.LocalEngine(), **SETTINGS)
    assert plain.devices["sim_energy_j"].isna().all() and plain.rounds["sim_energy_j"].isna().all()


def test_a_fleet_files_power_must_be_positive(tmp_path):
    fleet = tmp_path / "fleet.csv"
    fleet.write_text(
        "device_id,speed,down_kbps,up_kbps,availability,dropout,compute_w\n"
        "0,1.0,10000,2000,1.0,0.0,-1\n"
        "1,1.0,10000,2000,1.0,0.0,2\n"
    )
    with pytest.raises(FleetError, match="compute_w must be a number from 1e-06 to 1000; device"):
        fedsim.run(out=str(tmp_path / "r"), engine=fedsim.LocalEngine(), fleet=str(fleet), **SETTINGS)


def test_report_adds_the_energy_to_reach_each_target(tmp_path):
    from fedsim.report.analysis import kj_to, summary

    fedsim.run(out=str(tmp_path / "runs" / "a"), engine=fedsim.LocalEngine(), fleet="uniform", **SETTINGS)
    table = summary(tmp_path / "runs")
    rounds = fedsim.load_run(tmp_path / "runs" / "a").rounds
    assert table["sim_kj"].iloc[0] == pytest.approx(rounds["sim_energy_j"].sum() / 1000)
    first = rounds["test_accuracy"].iloc[0]
    assert kj_to(rounds, first) == pytest.approx(rounds["sim_energy_j"].iloc[0] / 1000)
    assert np.isnan(kj_to(rounds, 1.01))
    assert "sim_kj_to_0.75" in table and "sim_kj_to_0.80" in table
