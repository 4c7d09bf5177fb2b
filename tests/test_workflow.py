"""A researcher's second week: sweeps from the CLI whatever their sizes, feedback during waits, custom
strategies everywhere, runs named by what ran, honest summaries, messages that suggest, and figures a
reviewer would accept."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import fedsim
from fedsim.cli import main
from fedsim.experiment.config import Config, ConfigError

TOY = ["--dataset", "toy_images", "--toy-samples", "12", "--engine", "local", "--no-progress"]


def test_a_sweep_whose_per_round_exceeds_its_smallest_fleet_runs_and_says_where(tmp_path, capsys):
    """The README's `--devices 10,100,... --per-round 100` failed on the base config (10 devices)."""
    out = tmp_path / "sweep"
    assert main(["sweep", "--devices", "3,6", "--per-round", "5", "--rounds", "1", "--out", str(out), *TOY]) == 0
    err = capsys.readouterr().err
    assert f"fedsim: sweep in {out}: 2 of 2 points to run" in err
    assert "fedsim: point 1/2: devices=3 partition=iid seed=0" in err
    assert "fedsim: point 2/2: devices=6" in err
    table = fedsim.load_runs(out)
    assert sorted(table.groupby("run")["per_round"].first()) == [3, 5]  # capped per point


def test_an_interrupted_sweep_names_its_folder_and_how_to_go_on(tmp_path, capsys, monkeypatch):
    import importlib

    module = importlib.import_module("fedsim.experiment.sweep")  # (fedsim.experiment.sweep is also the function)
    calls = []
    real = module.run

    def stop_on_second(config, **kwargs):
        calls.append(config)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(config, **kwargs)

    monkeypatch.setattr(module, "run", stop_on_second)
    out = tmp_path / "sweep"
    assert main(["sweep", "--devices", "3,4", "--rounds", "1", "--out", str(out), *TOY]) == 130
    err = capsys.readouterr().err
    assert f"the sweep in {out} keeps its completed points; continue with: fedsim sweep --resume {out}" in err


def test_a_run_says_what_it_is_doing_before_round_one(tmp_path, capsys):
    fedsim.run(dataset="toy_images", devices=2, rounds=1, out=str(tmp_path / "r"), engine=fedsim.LocalEngine())
    err = capsys.readouterr().err
    assert "fedsim: starting: the hosts, the 2 devices' data, the model's artifact" in err
    assert "fedsim: started in" in err and "()" not in err


def _strategy_module(folder: Path) -> None:
    (folder / "mystrat.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import fedsim

            class ServerMom(fedsim.Strategy):
                name = "servermom"

                def apply(self, weights, aggregate, state):
                    return aggregate.mean().astype(weights.dtype), state
            """
        )
    )


def test_a_custom_strategy_runs_from_the_cli_and_sweeps(tmp_path, monkeypatch, capsys):
    """--strategy package.module:Class from the current folder, without PYTHONPATH=."""
    monkeypatch.chdir(tmp_path)  # (the CLI must find the module by itself: no sys.path change here)
    _strategy_module(tmp_path)
    args = ["run", "--strategy", "mystrat:ServerMom", "--devices", "3", "--rounds", "1", "--out", "r", *TOY]
    assert main(args) == 0
    assert fedsim.load_run(tmp_path / "r").meta["strategy_name"] == "mystrat:ServerMom"
    sweep = ["sweep", "--strategy", "fedavg,mystrat:ServerMom", "--devices", "3", "--rounds", "1", "--out", "s", *TOY]
    assert main(sweep) == 0
    assert set(fedsim.load_runs(tmp_path / "s")["strategy"]) == {"fedavg", "mystrat:ServerMom"}


def test_an_unimportable_builder_says_where_fedsim_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(fedsim.ModelError, match=f"fedsim looks in the current folder \\({tmp_path}\\)"):
        fedsim.run(model="nosuchmodels:build", dataset="toy_images", devices=2, rounds=1, engine=fedsim.LocalEngine())


def test_a_builder_that_raises_is_shown_at_its_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "badmodels.py").write_text("def build(task):\n    raise ValueError('no such layer size')\n")
    with pytest.raises(
        fedsim.ModelError, match=r"raised ValueError: no such layer size \(at .*badmodels.py:2 in build"
    ):
        fedsim.run(model="badmodels:build", dataset="toy_images", devices=2, rounds=1, engine=fedsim.LocalEngine())


@pytest.mark.ray
def test_a_builder_that_raises_in_a_ray_worker_is_shown_at_its_line_from_the_cli(tmp_path):
    """On the default (Ray) engine the builder runs in a preparation worker: the one line still names
    the user's file and line, and no traceback of fedsim's internals is printed."""
    import subprocess
    import sys

    (tmp_path / "badmodels.py").write_text("def build(task):\n    raise ValueError('no such layer size')\n")
    out = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", "--model", "badmodels:build", "--dataset", "toy_images"]
        + ["--devices", "2", "--rounds", "1", "--no-progress", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "no such layer size" in out.stderr and "badmodels.py:2 in build" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "r").exists()


def test_runs_are_named_by_what_ran(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = fedsim.run(dataset="toy_images", strategy="fedadam", devices=2, rounds=1, engine=fedsim.LocalEngine())
    assert run.path.parent == Path("results") / "toy_images_mlp_fedadam"
    assert run.config["name"] == "toy_images_mlp_fedadam"
    assert Config(dataset="synthetic:0.5,0.5", model="logreg", strategy="fedprox").run_name == (
        "synthetic-0.5-0.5_logreg_fedprox"
    )
    assert Config(name="mine").run_name == "mine"


def test_tensorboard_runs_are_grouped_by_name(tmp_path, monkeypatch):
    """A default folder results/<name>/<time> logs under DIR/<name>/<time>; an --out folder under DIR/<its name>."""
    monkeypatch.chdir(tmp_path)
    settings = dict(dataset="toy_images", devices=2, rounds=1, tensorboard=str(tmp_path / "tb"), progress=False)
    run = fedsim.run(engine=fedsim.LocalEngine(), **settings)
    assert run.path.parent.name == "toy_images_mlp_fedavg"
    assert list((tmp_path / "tb" / "toy_images_mlp_fedavg" / run.path.name).glob("events.out.tfevents.*"))
    fedsim.run(engine=fedsim.LocalEngine(), out=str(tmp_path / "mine"), **settings)
    assert list((tmp_path / "tb" / "mine").glob("events.out.tfevents.*"))


def test_the_summary_is_honest(tmp_path, capsys):
    out = tmp_path / "r"
    assert (
        main(
            ["run", "--devices", "2", "--rounds", "2", "--eval-initial", "--fleet", "uniform", "--out", str(out), *TOY]
        )
        == 0
    )
    said = capsys.readouterr().out
    assert "fedsim: 2 rounds on 2 devices" in said  # round 0 is the initial evaluation, not a round
    assert "simulated time" in said and "kJ" in said
    assert ".venv/bin/python" in said or "/bin/python -c" in said  # the interpreter fedsim is installed in
    rejected = tmp_path / "rej"
    assert (
        main(["run", "--devices", "2", "--rounds", "1", "--max-update-norm", "1e-9", "--out", str(rejected), *TOY]) == 0
    )
    assert "no update was accepted in any round (e.g. update norm" in capsys.readouterr().out


def test_values_get_did_you_mean():
    for settings, hint in (
        (dict(fleet="phone"), "did you mean phones"),
        (dict(strategy="fedadm"), "did you mean fedadam"),
        (dict(device_optimizer="adm"), "did you mean adam"),
    ):
        with pytest.raises(ConfigError, match=hint):
            Config(**settings)


def test_a_sweep_table_in_a_run_config_points_to_fedsim_sweep(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("devices = 4\n[sweep]\nlr = [0.1, 0.2]\n")
    with pytest.raises(ConfigError, match=r"\[sweep\] is a table of values for `fedsim sweep --config FILE`"):
        Config.from_toml(toml)


def test_an_artifact_refuses_the_settings_it_would_ignore():
    with pytest.raises(ConfigError, match="--artifact x.tflite trains as it was built: --lr would be ignored"):
        Config(artifact="x.tflite", lr=0.2)


def test_krum_records_which_updates_it_used(tmp_path):
    run = fedsim.run(
        dataset="toy_images",
        devices=6,
        rounds=1,
        strategy="krum",
        out=str(tmp_path / "k"),
        engine=fedsim.LocalEngine(),
        progress=False,
    )
    ok = run.devices[run.devices["status"] == "ok"]
    assert ok["aggregated"].sum() == 1 and set(ok["aggregated"]) == {0.0, 1.0}
    plain = fedsim.run(
        dataset="toy_images", devices=3, rounds=1, out=str(tmp_path / "a"), engine=fedsim.LocalEngine(), progress=False
    )
    assert (plain.devices["aggregated"] == 1.0).all()


def test_report_lists_sweep_points_that_failed_before_round_one(tmp_path):
    from fedsim.report.analysis import summary

    out = tmp_path / "sweep"
    base = Config(dataset="toy_images", toy_samples=12, rounds=1)
    # classes:11 of a 10-class data set is found only where the data is partitioned, before round 1
    fedsim.sweep(base, devices=[3], partitions=["iid", "classes:11"], out=str(out), engine="local", progress=False)
    table = summary(out)
    assert len(table) == 2 and set(table["status"]) == {"completed", "failed"}
    assert table.loc[table["status"] == "failed", "error"].iloc[0]


def test_offline_fetch_says_so_in_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    from fedsim.data import DataNotFoundError
    from fedsim.data.fashion_mnist import fetch_fashion_mnist

    dest = tmp_path / "new" / "fmnist"
    with pytest.raises(DataNotFoundError, match="cannot download .*install the Debian package"):
        fetch_fashion_mnist(dest, mirror="http://127.0.0.1:9/")
    assert not (tmp_path / "new").exists()


# ---- figures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def policy_runs(tmp_path_factory):
    """Two runs whose curves coincide (partial vs drop with nobody cut) and a fedadam run."""
    root = tmp_path_factory.mktemp("figs")
    common = dict(
        dataset="toy_images",
        toy_samples=12,
        devices=3,
        rounds=2,
        engine=fedsim.LocalEngine(),
        progress=False,
        fleet="uniform",
    )
    fedsim.run(out=str(root / "drop"), deadline=1e6, straggler="drop", **common)
    fedsim.run(out=str(root / "partial"), deadline=1e6, straggler="partial", **common)
    fedsim.run(out=str(root / "adam"), strategy="fedadam", **common)
    return root


def test_legends_leave_out_settings_that_do_not_apply_and_styles_never_repeat(policy_runs):
    from fedsim.report.analysis import figures

    figs = figures(policy_runs)
    _fig, axes = figs["accuracy.png"]
    lines = axes[0].get_lines()
    labels = [line.get_label() for line in lines]
    assert all("None" not in label for label in labels), labels
    looks = {(str(line.get_color()), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(looks) == len(lines)  # coinciding curves stay distinguishable
    assert "Test accuracy per round" in axes[0].get_title()


def test_simulated_time_is_drawn_in_the_unit_that_fits(policy_runs):
    from fedsim.report.analysis import figures, time_unit

    assert time_unit(30) == (1.0, "seconds") and time_unit(600) == (60.0, "minutes") and time_unit(9000)[1] == "hours"
    _fig, axes = figures(policy_runs)["accuracy_sim_time.png"]
    assert axes[0].get_xlabel() == "simulated seconds"  # two rounds of tiny models take seconds


def test_scaling_shows_the_seed_spread_and_titles_fit(tmp_path):
    from fedsim.report.analysis import figures, plot

    out = tmp_path / "sweep"
    base = Config(dataset="toy_images", toy_samples=12, rounds=1, per_round=2, device_test_fraction=0.2)
    fedsim.sweep(base, devices=[2, 4], seeds=[0, 1], out=str(out), engine="local", progress=False)
    figs = figures(out)
    fig, (left, _) = figs["scaling.png"]
    assert "min-max over 2 seeds" in left.get_title()
    assert left.collections  # the band
    assert "2 per round" in fig.get_suptitle()
    spread, _ = figs["device_spread.png"]
    written = plot(out)
    assert {p.name for p in written} >= {"accuracy.png", "scaling.png", "device_spread.png"}
    spread.canvas.draw()
    box = spread._suptitle.get_window_extent()
    assert box.y1 <= spread.bbox.height + 1  # the title is inside the figure


@pytest.mark.ray
def test_the_stale_cluster_file_does_not_capture_a_local_run(tmp_path):
    """A `ray start` long gone leaves /tmp/ray/ray_current_cluster naming its address; a run without
    --address starts its own Ray instead of trying to join it."""
    cluster_file = Path("/tmp/ray/ray_current_cluster")
    saved = cluster_file.read_text() if cluster_file.is_file() else None
    cluster_file.parent.mkdir(parents=True, exist_ok=True)
    cluster_file.write_text("127.0.0.1:1\n")  # nothing listens there
    try:
        run = fedsim.run(dataset="toy_images", devices=2, rounds=1, hosts=1, out=str(tmp_path / "r"), progress=False)
        assert run.meta["status"] == "completed"
    finally:
        if saved is None:
            cluster_file.unlink(missing_ok=True)
        else:
            cluster_file.write_text(saved)


def test_a_strategy_setting_in_a_config_file_is_named_as_its_key():
    with pytest.raises(ConfigError, match=r"config key \[strategy\] server_lr must be a positive number, got -1"):
        Config.from_dict({"strategy": {"name": "fedadam", "server_lr": -1}})
