"""The command line: user errors are one line naming the flag, before any work (and before Ray)."""

import subprocess
import sys

import pytest

from fedsim.cli import build_parser, config_from_args, main


def fedsim_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--devices", "0"], "--devices must be at least 1"),
        (["--fraction", "1.5"], "--fraction must be in (0, 1]"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--devices", "4", "--hosts", "5"], "--hosts 5 exceeds --devices 4"),
        (["--strategy", "fedavg", "--tau", "0.1"], "--tau is not a setting of --strategy fedavg"),
        (["--strategy", "fedadam", "--beta1", "1.5"], "--beta1 must be in [0, 1), got 1.5"),
        (["--byzantine", "0.2"], "--byzantine 0.2 needs --attack"),
        (["--fleet", "phones", "--over-select", "0.9"], "--over-select must be at least 1"),
        (["--deadline", "5"], "--deadline needs --fleet"),
    ],
)
def test_bad_flags_fail_with_one_line_naming_the_flag(args, message, capsys):
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_bad_flags_fail_before_ray_starts(tmp_path):
    out = fedsim_cli("run", "--devices", "0", "--out", str(tmp_path / "never"))
    assert out.returncode == 2 and "--devices must be at least 1" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "never").exists()


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"Fashion-MNIST not found in {tmp_path}" in err and "dataset-fashion-mnist" in err
    assert not (tmp_path / "o").exists()


def test_flags_override_the_config_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("devices = 20\nrounds = 3\n")
    args = build_parser().parse_args(["run", "--config", str(f), "--rounds", "9", "--local-epochs", "2"])
    c = config_from_args(args)
    assert (c.devices, c.rounds, c.local_epochs) == (20, 9, 2)


def test_a_damaged_data_folder_is_one_line_naming_the_file(tmp_path, capsys):
    from test_data import fake_fashion_mnist

    from fedsim.data.fashion_mnist import FILES

    fake_fashion_mnist(tmp_path)
    (tmp_path / FILES["y_test"]).write_bytes(b"\x1f\x8b broken")
    assert main(["run", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert FILES["y_test"] in err and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--devices", "100000000"], "--devices 100000000: fashion_mnist has 60000 training samples"),
        (["--dataset", "synthetic:1,1", "--devices", "1000000"], "GiB available; use at most"),
    ],
)
def test_a_fleet_too_large_for_the_data_or_the_machine_is_one_line_at_once(args, message, tmp_path):
    import time

    started = time.monotonic()
    out = fedsim_cli("run", *args, "--rounds", "1", "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.count("\n") == 1 and time.monotonic() - started < 60
    assert not (tmp_path / "o").exists()


@pytest.mark.ray
def test_a_partition_the_worker_cannot_make_is_one_line_and_leaves_no_folder(tmp_path):
    """The error is raised in Ray's preparation worker; the user sees fedsim's one line, and the same
    command can be run again (no half-made folder)."""
    for _ in range(2):
        out = fedsim_cli(
            "run", "--partition", "classes:11", "--devices", "4", "--rounds", "1", "--out", str(tmp_path / "o")
        )
        lines = [line for line in out.stderr.splitlines() if line.startswith("fedsim")]
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        # what it was doing ("starting: ..."), then the one error line
        errors = [line for line in lines if not line.startswith("fedsim: starting:")]
        assert len(errors) == 1 and errors[0].startswith("fedsim: error:") and "classes:11" in errors[0], lines
        assert not (tmp_path / "o").exists()


@pytest.mark.ray
def test_user_data_a_user_builder_and_a_foreign_artifact_run_end_to_end(tmp_path):
    """Through the CLI and Ray: an .npz with a builder given by import path; a .tflite made by hand
    the guide's way; a broken one refused in one line leaving no folder; inspect on a run folder."""
    import json
    import os

    import numpy as np
    from guide_artifact import build_guide_tflite

    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "mine.npz", x_train=x[:160], y_train=y[:160], x_test=x[160:], y_test=y[160:])
    out = fedsim_cli(
        "run",
        "--data",
        str(tmp_path / "mine.npz"),
        "--model",
        "user_models:build",
        "--devices",
        "4",
        "--rounds",
        "2",
        "--lr",
        "0.1",
        "--hosts",
        "2",
        "--no-progress",
        "--out",
        str(tmp_path / "npz"),
        env=env,
    )
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp_path / "npz" / "config.json").read_text())
    assert meta["config"]["data"]["dataset"] == "npz" and meta["config"]["device"]["model"] == "user_models:build"
    assert meta["task"]["input_shape"] == [8] and (tmp_path / "npz" / "artifact.json").is_file()

    (tmp_path / "guide.tflite").write_bytes(build_guide_tflite())
    out = fedsim_cli(
        "run",
        "--dataset",
        "toy_images",
        "--toy-samples",
        "20",
        "--artifact",
        str(tmp_path / "guide.tflite"),
        "--devices",
        "4",
        "--rounds",
        "2",
        "--hosts",
        "2",
        "--no-progress",
        "--out",
        str(tmp_path / "byo"),
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "byo" / "model.tflite").read_bytes() == (tmp_path / "guide.tflite").read_bytes()
    assert (
        json.loads((tmp_path / "byo" / "config.json").read_text())["model"] == f"artifact {tmp_path / 'guide.tflite'}"
    )

    (tmp_path / "broken.tflite").write_bytes(build_guide_tflite(signatures=("train", "infer", "save")))
    out = fedsim_cli(
        "run",
        "--dataset",
        "toy_images",
        "--artifact",
        str(tmp_path / "broken.tflite"),
        "--devices",
        "2",
        "--rounds",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "no"),
    )
    # one line from fedsim (Ray's own start-up warning may precede it), no worker traceback
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert [line for line in out.stderr.splitlines() if "fedsim" in line or "restore" in line] == [
        "fedsim: error: missing signature(s) restore; it has infer, save, train "
        "(the guide's contract: train, infer, save, restore)"
    ], out.stderr
    assert not (tmp_path / "no").exists()

    out = fedsim_cli("inspect", str(tmp_path / "npz"), "--repeats", "3", "--parity", "2", env=env)
    assert out.returncode == 0, out.stderr
    assert "| train" in out.stdout and "FlexRestore" in out.stdout and "parity" in out.stdout


def test_strategy_flags_reach_the_config():
    args = build_parser().parse_args(
        [
            "run",
            "--strategy",
            "fedadam",
            "--server-lr",
            "0.02",
            "--beta2",
            "0.9",
            "--byzantine",
            "0.1",
            "--attack",
            "alie",
            "--fleet",
            "phones",
            "--deadline",
            "30",
        ]
    )
    c = config_from_args(args)
    assert (c.strategy, c.server_lr, c.beta2, c.byzantine, c.attack) == ("fedadam", 0.02, 0.9, 0.1, "alie")
    assert (c.fleet, c.deadline) == ("phones", 30.0)


def test_version():
    out = fedsim_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("fedsim ") and out.stdout.split()[1][0].isdigit()


def test_a_mistyped_flag_gets_a_suggestion_and_help_shows_one_default(capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--devcies", "3"])
    assert e.value.code == 2 and "did you mean --devices?" in capsys.readouterr().err
    # a flag of another command is named as such, not "suggested" as itself
    with pytest.raises(SystemExit):
        main(["run", "--seeds", "0,1"])
    assert "--seeds is a flag of fedsim sweep, not of fedsim run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--resmue", "x"])
    assert "did you mean --resume?" in capsys.readouterr().err
    text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "one per CPU) (default" not in " ".join(text.split())


def test_engine_local_runs_without_ray(tmp_path):
    out = fedsim_cli(
        "run",
        "--engine",
        "local",
        "--dataset",
        "toy_images",
        "--toy-samples",
        "20",
        "--devices",
        "3",
        "--rounds",
        "1",
        "--no-progress",
        "--out",
        str(tmp_path / "o"),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    import fedsim

    run = fedsim.load_run(tmp_path / "o")
    assert run.meta["engine"] == "LocalEngine" and run.meta["status"] == "completed"
