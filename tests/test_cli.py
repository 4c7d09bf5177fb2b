"""The command line: user errors are one line naming the flag, before any work (and before Ray)."""

import subprocess
import sys

import pytest

from fedsim.cli import build_parser, config_from_args, main


def fedsim_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--devices", "0"], "--devices must be at least 1"),
        (["--fraction", "1.5"], "--fraction must be in (0, 1]"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--devices", "4", "--hosts", "5"], "--hosts 5 exceeds --devices 4"),
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
