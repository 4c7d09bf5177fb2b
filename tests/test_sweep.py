"""Sweeps run a grid in one Ray session; plot and report read what they leave."""

import json
from pathlib import Path

import pandas as pd
import pytest

import fedsim
from fedsim.report.analysis import plot, report, summary

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweeps") / "s"
    base = fedsim.Config(dataset="toy_images", toy_samples=20, rounds=2, per_round=6, hosts=2, name="t")
    table = fedsim.sweep(base, devices=[4, 8], partitions=["iid", "classes:20"], seeds=[0], out=folder, progress=False)
    return folder, table


def test_every_point_is_a_run_folder_and_failures_are_recorded(swept):
    folder, table = swept
    saved = pd.read_parquet(folder / "sweep.parquet")
    assert set(saved["point"]) == set(table["point"]) and len(set(saved["point"])) == 4
    ok = saved[saved["status"] == "completed"]
    assert sorted(ok["devices"].unique()) == [4, 8] and set(ok["partition"]) == {"iid"}
    assert ok.groupby("point")["round"].max().tolist() == [2, 2]
    assert set(ok["devices_selected"]) == {4, 6}  # per_round 6, capped at 4 devices
    failed = saved[saved["status"] == "failed"]
    assert len(failed) == 2 and failed["error"].str.contains("only 10 labels").all()
    points = json.loads((folder / "sweep.json").read_text())["points"]
    assert [p["status"] for p in points].count("failed") == 2


def test_one_ray_session_serves_every_point(swept):
    folder, _ = swept
    nodes = {
        tuple(fedsim.load_run(folder / p).meta["host_nodes"]) for p in ("devices-4_iid_seed-0", "devices-8_iid_seed-0")
    }
    assert len({n for pair in nodes for n in pair}) == 1  # a new Ray start would have a new node id


def test_load_runs_of_a_sweep_is_ready_for_groupby(swept):
    folder, _ = swept
    df = fedsim.load_runs(folder)
    assert df.groupby(["devices", "partition"])["test_accuracy"].max().index.tolist() == [(4, "iid"), (8, "iid")]


def test_report_and_plots(swept, tmp_path):
    folder, _ = swept
    table = summary(folder)
    ran, failed = table[table["status"] == "completed"], table[table["status"] == "failed"]
    assert list(ran["devices"]) == [4, 8] and ran["final_accuracy"].between(0, 1).all()
    # the points that failed before round 1 are listed too, each with its error
    assert sorted(failed["devices"]) == [4, 8] and failed["error"].str.contains("only 10 labels").all()
    md = report(folder)
    assert md.startswith("|") and "devices-8_iid_seed-0" in md and "final_accuracy" in md
    written = plot(folder, tmp_path)
    assert [p.name for p in written] == ["accuracy.png", "scaling.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000 for p in written)


def test_sweep_any_setting_from_the_command_line_then_resume_only_what_did_not_complete(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "lr"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "sweep",
            "--devices",
            "20",
            "--lr",
            "0.01,0.1",
            "--rounds",
            "2",
            "--dataset",
            "toy_images",
            "--toy-samples",
            "20",
            "--no-progress",
            "--out",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"sweep in {folder}" in out.stdout
    df = fedsim.load_runs(folder)
    assert sorted(df["lr"].unique()) == [0.01, 0.1] and set(df["status"]) == {"completed"}
    md = report(folder)
    header = [cell.strip() for cell in md.splitlines()[0].split("|")]
    assert "lr" in header and "status" in header and "completed" in md

    # a point that did not complete (here: never ran) is run by --resume; the completed one is left alone
    saved = json.loads((folder / "sweep.json").read_text())
    first, second = saved["points"]
    kept = (folder / first["point"] / "config.json").stat().st_mtime_ns
    import shutil

    shutil.rmtree(folder / second["point"])
    second["status"], second["error"] = "failed", "cut"
    (folder / "sweep.json").write_text(json.dumps(saved))
    again = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "sweep", "--resume", str(folder), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert (folder / first["point"] / "config.json").stat().st_mtime_ns == kept
    points = json.loads((folder / "sweep.json").read_text())["points"]
    assert [p["status"] for p in points] == ["completed", "completed"]
    assert fedsim.load_run(folder / second["point"]).meta["status"] == "completed"


def test_a_sweep_table_in_the_config_file(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "s.toml"
    f.write_text(
        'dataset = "toy_images"\ntoy_samples = 20\ndevices = 6\nrounds = 1\n\n[sweep]\nlocal_epochs = [1, 2]\n'
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "sweep",
            "--config",
            str(f),
            "--no-progress",
            "--out",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    df = fedsim.load_runs(tmp_path / "s")
    assert sorted(df["local_epochs"].unique()) == [1, 2] and set(df["devices"]) == {6}


def test_comparing_strategies_gives_each_only_its_own_settings():
    """--strategy fedavg,fedadam --server-lr 0.01,0.1: fedadam runs at both server learning rates,
    fedavg (which has none) runs once instead of failing; a single strategy keeps the strict check."""
    from fedsim.experiment.sweep import _axes, _configs

    base = fedsim.Config(dataset="toy_images", devices=4)
    axes = _axes(base, None, None, None, {"strategy": ["fedavg", "fedadam"], "server_lr": [0.01, 0.1]})
    points = _configs(base, axes)
    assert [(c.strategy, c.server_lr) for _, c in points] == [("fedavg", None), ("fedadam", 0.01), ("fedadam", 0.1)]
    assert [n for n, _ in points] == [
        "devices-4_iid_seed-0_strategy-fedavg",
        "devices-4_iid_seed-0_strategy-fedadam_server_lr-0.01",
        "devices-4_iid_seed-0_strategy-fedadam_server_lr-0.1",
    ]
    # one server lr for all (a one-value axis, as `fedsim sweep --server-lr 0.01` gives it): fedavg drops it
    fixed = _configs(base, _axes(base, None, None, None, {"strategy": ["fedavg", "fedadam"], "server_lr": [0.01]}))
    assert [(c.strategy, c.server_lr) for _, c in fixed] == [("fedavg", None), ("fedadam", 0.01)]
    # not comparing strategies: a setting the strategy does not take is still the user's mistake
    with pytest.raises(fedsim.ConfigError, match="--server-lr is not a setting of --strategy fedavg"):
        _configs(base, _axes(base, None, None, None, {"server_lr": [0.01, 0.1]}))


def test_sweep_command_compares_strategies_with_a_shared_server_lr(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "sweep",
            "--devices",
            "4",
            "--rounds",
            "1",
            "--dataset",
            "toy_images",
            "--toy-samples",
            "10",
            "--strategy",
            "fedavg,fedadam",
            "--server-lr",
            "0.01",
            "--engine",
            "local",
            "--no-progress",
            "--out",
            str(tmp_path / "s"),
            "--name",
            "cmp",
            "--mlflow",
            f"sqlite:///{tmp_path / 'm.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "sweep of 2 points, 0 failed" in out.stdout
    df = fedsim.load_runs(tmp_path / "s")
    assert dict(zip(df["strategy"], df["server_lr"].fillna(-1))) == {"fedavg": -1, "fedadam": 0.01}
    engines = {
        fedsim.load_run(tmp_path / "s" / point).meta["engine"] for point in df["run"].map(lambda r: Path(r).name)
    }
    assert engines == {"LocalEngine"}  # --engine local: no Ray
    # --mlflow: both points are runs of the sweep's one experiment, named by their folders
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    logged = client.search_runs([client.get_experiment_by_name("cmp").experiment_id])
    assert sorted(r.info.run_name for r in logged) == sorted(Path(r).name for r in df["run"].unique())
