"""Real Ray: actors hosting devices, checkpoints as bytes through the object store."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fedsim
from fedsim.engine.ray import RayEngine
from fedsim.pipeline import plain_round

pytestmark = pytest.mark.ray


def test_cli_end_to_end_on_ray_two_hosts_accuracy_rises(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "run",
            "--dataset",
            "toy_images",
            "--toy-samples",
            "40",
            "--devices",
            "8",
            "--hosts",
            "2",
            "--rounds",
            "4",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a successful run says nothing but its own lines: no Ray start-up notices or error-level lines
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [], proc.stderr[-3000:]
    run = fedsim.load_run(out)
    acc = run.rounds["test_accuracy"].tolist()
    assert acc[-1] > acc[0] + 0.2, acc
    assert run.meta["engine"] == "RayEngine" and run.meta["hosts"] == 2
    assert sorted(run.devices["host"].unique()) == [0, 1]
    assert len(run.devices) == 4 * 8 and (run.devices["status"] == "ok").all()


def test_ray_gives_exactly_the_local_engines_results(tmp_path):
    settings = dict(dataset="toy_images", toy_samples=30, devices=9, rounds=2, seed=5, fraction=0.67, progress=False)
    on_ray = fedsim.run(out=str(tmp_path / "ray"), engine=RayEngine(hosts=2), **settings)
    local = fedsim.run(out=str(tmp_path / "local"), engine=fedsim.LocalEngine(3), **settings)
    np.testing.assert_array_equal(on_ray.rounds["test_accuracy"], local.rounds["test_accuracy"])
    np.testing.assert_array_equal(on_ray.rounds["test_loss"], local.rounds["test_loss"])
    assert on_ray.devices["device_id"].tolist() == local.devices["device_id"].tolist()


def test_one_host_per_device_when_hosts_equal_devices(tmp_path):
    run = fedsim.run(
        dataset="toy_images", toy_samples=10, devices=3, hosts=3, rounds=1, out=str(tmp_path / "r"), progress=False
    )
    assert run.meta["hosts"] == 3
    assert run.devices.groupby("host")["device_id"].nunique().tolist() == [1, 1, 1]


def test_an_address_that_does_not_answer_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "run",
            "--dataset",
            "toy_images",
            "--devices",
            "2",
            "--rounds",
            "1",
            "--address",
            "127.0.0.1:1",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2
    assert "--address 127.0.0.1:1: no Ray cluster answered" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.real_data
def test_fashion_mnist_ten_devices_five_rounds_reaches_082(tmp_path):
    out = tmp_path / "fmnist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "run",
            "--devices",
            "10",
            "--rounds",
            "5",
            "--local-epochs",
            "1",
            "--batch-size",
            "32",
            "--lr",
            "0.05",
            "--seed",
            "0",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = fedsim.load_run(out)
    assert len(run.rounds) == 5 and len(run.devices) == 50
    assert run.rounds["test_accuracy"].iloc[-1] >= 0.82
    assert run.meta["dataset"] == {"name": "fashion_mnist", "train_samples": 60000, "test_samples": 10000}


def test_the_coordinator_process_never_imports_tensorflow(tmp_path):
    """Conversion, devices and evaluation run in Ray workers; the driver saves ~0.5 GB by not importing TF."""
    script = (
        "import sys, fedsim\n"
        f"fedsim.run(dataset='toy_images', toy_samples=10, devices=4, hosts=2, rounds=2, out={str(tmp_path / 'r')!r}, "
        f"tensorboard={str(tmp_path / 'tb')!r}, mlflow={'sqlite:///' + str(tmp_path / 'm.db')!r}, progress=False)\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "False False"
    assert len(fedsim.load_run(tmp_path / "r").rounds) == 2
    assert list((tmp_path / "tb" / "r").glob("events.out.tfevents.*"))  # tracking without TensorFlow too
    assert (tmp_path / "m.db").stat().st_size > 0  # MLflow too


def test_a_host_killed_mid_round_fails_its_devices_then_comes_back(tmp_path):
    """SIGKILL a host process during a round: its devices are recorded as failed, the other host's
    devices report, and the next round runs on all devices again (Ray restarts the host)."""
    import os
    import signal
    import threading
    import time

    from fedsim.data import DataRecipe
    from fedsim.engine.layout import Setup
    from fedsim.engine.settings import HostSettings
    from fedsim.model.builders import ArtifactRecipe

    setup = Setup(
        ArtifactRecipe(),
        DataRecipe("toy_images", toy_samples=40),
        devices=8,
        settings=HostSettings(local_epochs=1000, batch_size=8, seed=0),
    )
    with RayEngine(hosts=2) as engine:
        engine.start(setup)
        initial = engine.initial_checkpoint()
        victim = engine.host_pids[0]
        results = {}
        worker = threading.Thread(
            target=lambda: results.setdefault(1, engine.run_round(1, initial, list(range(8)), plain_round(initial)))
        )
        worker.start()
        time.sleep(1.0)  # well inside the round: each host trains 4 devices x 1000 epochs (~3 s)
        os.kill(victim, signal.SIGKILL)
        worker.join(timeout=120)
        reports = {r.device_id: r for r in results[1].reports}
        assert sorted(reports) == list(range(8))
        assert {d for d, r in reports.items() if r.status == "failed"} == {0, 2, 4, 6}  # host 0's devices
        assert all("host 0 failed" in reports[d].error for d in (0, 2, 4, 6))
        assert all(reports[d].status == "ok" for d in (1, 3, 5, 7))
        again = engine.run_round(2, initial, list(range(8)), plain_round(initial))
        assert [r.status for r in again.reports] == ["ok"] * 8
        assert 0.0 <= engine.evaluate(initial).accuracy <= 1.0


def _kill_session(sid: int) -> None:
    """SIGKILL every process of a session: the driver and the Ray processes it started."""
    import os
    import signal

    import psutil

    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                os.kill(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass


def _wait_for_round(proc: subprocess.Popen, out, rounds: int, timeout_s: float = 240) -> None:
    """Until the run in `out` has committed `rounds` rounds (or its process ended, or time ran out)."""
    import json
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((out / "config.json").read_text()).get("rounds_completed", 0) >= rounds:
                return
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.01)


def test_a_run_killed_after_round_3_resumes_to_the_uninterrupted_table(tmp_path):
    import json

    args = [
        "--dataset",
        "toy_images",
        "--toy-samples",
        "40",
        "--devices",
        "8",
        "--hosts",
        "2",
        "--rounds",
        "6",
        "--local-epochs",
        "25",
        "--seed",
        "4",
        "--commit-every",
        "1",  # killed after a given round: every round commits
        "--no-progress",
    ]
    cli = [sys.executable, "-m", "fedsim.cli", "run"]
    straight = subprocess.run(
        [*cli, *args, "--out", str(tmp_path / "straight")], capture_output=True, text=True, timeout=300
    )
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cli, *args, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_for_round(proc, out, 3)
    finally:
        _kill_session(proc.pid)
        proc.wait(timeout=60)
    killed_at = json.loads((out / "config.json").read_text())["rounds_completed"]
    assert 3 <= killed_at < 6, f"the kill landed after round {killed_at}"

    resumed = subprocess.run([*cli, "--resume", str(out), "--no-progress"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = fedsim.load_run(tmp_path / "straight"), fedsim.load_run(out)
    columns = ["round", "test_accuracy", "test_loss", "train_loss", "devices_selected", "devices_accepted", "samples"]
    assert b.rounds[columns].equals(a.rounds[columns])
    assert b.meta["resumed"][0]["after_round"] == killed_at and b.meta["status"] == "completed"


def test_resume_with_other_settings_is_refused(tmp_path, capsys):
    from fedsim.cli import main

    assert main(["run", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "--resume uses the run's own settings; drop --lr" in capsys.readouterr().err


def test_a_hung_host_times_out_is_restarted_and_serves_the_next_round():
    """SIGSTOP a host (it hangs, it does not die): with a round timeout its devices are recorded as
    failed, the host is restarted, and the next round runs on every device."""
    import os
    import signal

    from fedsim.data import DataRecipe
    from fedsim.engine.layout import Setup
    from fedsim.engine.settings import HostSettings
    from fedsim.model.builders import ArtifactRecipe

    setup = Setup(
        ArtifactRecipe(),
        DataRecipe("toy_images", toy_samples=20),
        devices=4,
        settings=HostSettings(local_epochs=1, batch_size=8, seed=0),
    )
    with RayEngine(hosts=2, round_timeout_s=5) as engine:
        engine.start(setup)
        initial = engine.initial_checkpoint()
        os.kill(engine.host_pids[1], signal.SIGSTOP)
        stalled = {r.device_id: r for r in engine.run_round(1, initial, [0, 1, 2, 3], plain_round(initial)).reports}
        assert [stalled[d].status for d in range(4)] == ["ok", "failed", "ok", "failed"]
        assert "no answer within --round-timeout 5 s" in stalled[1].error
        again = engine.run_round(2, initial, [0, 1, 2, 3], plain_round(initial))
        assert [r.status for r in again.reports] == ["ok"] * 4, [r.error for r in again.reports]


def without_ray_token(tmp_path, monkeypatch):
    """Token authentication off, for the cluster_utils cluster this test starts and for the driver that
    joins it (the same environment, with a home of its own): a local ray.init earlier in this process
    leaves RAY_AUTH_MODE=token in its environment, and any local start writes ~/.ray/auth_token, so
    otherwise the cluster and the driver disagree about tokens depending on which tests ran before."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home)}


@pytest.mark.parametrize("runtime", ["tflite", "executorch"])
def test_a_two_node_ray_cluster_gives_the_single_node_results(tmp_path, monkeypatch, runtime):
    """A real two-node cluster on this machine (a head and a second raylet with its own resources):
    fedsim joins it by address, places a host on each node, and gets the single-node table, on
    either on-device runtime."""
    from ray.cluster_utils import Cluster

    args = [
        "--dataset",
        "toy_images",
        "--toy-samples",
        "30",
        "--devices",
        "6",
        "--hosts",
        "2",
        "--rounds",
        "3",
        "--seed",
        "7",
        "--runtime",
        runtime,
        "--no-progress",
    ]
    cli = [sys.executable, "-m", "fedsim.cli", "run"]
    single = subprocess.run(
        [*cli, *args, "--out", str(tmp_path / "single")], capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-2000:]
    env = without_ray_token(tmp_path, monkeypatch)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        multi = subprocess.run(
            [*cli, *args, "--address", cluster.address, "--out", str(tmp_path / "multi")],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    finally:
        cluster.shutdown()
    assert multi.returncode == 0, multi.stderr[-2000:]
    a, b = fedsim.load_run(tmp_path / "single"), fedsim.load_run(tmp_path / "multi")
    assert len(set(b.meta["host_nodes"])) == 2  # one host on each node
    columns = ["round", "test_accuracy", "test_loss", "train_loss", "devices_accepted", "samples", "bytes_up"]
    assert b.rounds[columns].equals(a.rounds[columns])


def test_device_state_relayed_for_hosts_without_the_run_folder_gives_the_single_node_results(tmp_path, monkeypatch):
    """Top-k's error feedback is device state. On a two-node cluster whose hosts cannot write the run
    folder (forced: both nodes share this disk) it travels through the engine, which reads and stores
    it for them: the same tables and residuals as a single node whose hosts read and write it themselves."""
    from ray.cluster_utils import Cluster

    args = [
        "--dataset",
        "toy_images",
        "--toy-samples",
        "20",
        "--devices",
        "6",
        "--per-round",
        "4",
        "--hosts",
        "2",
        "--rounds",
        "3",
        "--seed",
        "5",
        "--compress",
        "topk:0.05",
        "--no-progress",
    ]
    cli = [sys.executable, "-m", "fedsim.cli", "run"]
    single = subprocess.run(
        [*cli, *args, "--out", str(tmp_path / "single")], capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-2000:]
    monkeypatch.setenv("FEDSIM_STATE_RELAY", "1")  # the cluster's workers inherit it
    env = without_ray_token(tmp_path, monkeypatch)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        multi = subprocess.run(
            [*cli, *args, "--address", cluster.address, "--out", str(tmp_path / "multi")],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
    finally:
        cluster.shutdown()
    assert multi.returncode == 0, multi.stderr[-2000:]
    a, b = fedsim.load_run(tmp_path / "single"), fedsim.load_run(tmp_path / "multi")
    assert a.meta["state_relay_hosts"] == [] and b.meta["state_relay_hosts"] == [0, 1]
    columns = ["round", "test_accuracy", "test_loss", "train_loss", "devices_accepted", "bytes_up"]
    assert b.rounds[columns].equals(a.rounds[columns])
    assert (a.path / "global.ckpt").read_bytes() == (b.path / "global.ckpt").read_bytes()
    assert a.device_state_index() and set(a.device_state_index()) == set(b.device_state_index())
    for d in a.device_state_index():
        np.testing.assert_array_equal(a.device_state(d)["compress.residual"], b.device_state(d)["compress.residual"])


def test_ctrl_c_records_interrupted_and_prints_the_command_that_continues(tmp_path):
    import json
    import signal

    out = tmp_path / "run"
    args = [
        "--dataset",
        "toy_images",
        "--toy-samples",
        "40",
        "--devices",
        "8",
        "--hosts",
        "2",
        "--rounds",
        "6",
        "--local-epochs",
        "25",
        "--seed",
        "4",
        "--commit-every",
        "1",  # killed after a given round: every round commits
        "--no-progress",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim.cli", "run", *args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for_round(proc, out, 1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        _kill_session(proc.pid)
    meta = json.loads((out / "config.json").read_text())
    assert proc.returncode == 130 and meta["status"] == "interrupted" and 1 <= meta["rounds_completed"] < 6, err[-2000:]
    assert f"continue with: fedsim run --resume {out}" in err
    resumed = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", "--resume", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert fedsim.load_run(out).meta["status"] == "completed" and len(fedsim.load_run(out).rounds) == 6


def test_simulated_times_are_the_same_on_ray_and_in_process(tmp_path):
    """The simulated clock follows the profiles, the pinned latency table and the checkpoint sizes,
    never the hosts' wall time: a Ray run and an in-process run record the same simulated times."""
    import json

    import pandas as pd

    latency = tmp_path / "latency.json"
    latency.write_text(json.dumps({"restore": 0.2, "train": 0.5, "save": 0.3}))
    settings = dict(
        dataset="toy_images",
        toy_samples=30,
        devices=8,
        rounds=2,
        seed=1,
        progress=False,
        fleet="phones",
        fraction=0.5,
        over_select=1.5,
        deadline=30.0,
        latency=str(latency),
    )
    on_ray = fedsim.run(out=str(tmp_path / "ray"), hosts=2, **settings)
    local = fedsim.run(out=str(tmp_path / "local"), engine=fedsim.LocalEngine(1), **settings)
    columns = ["round", "device_id", "status", "sim_compute_s", "sim_comm_s", "sim_finish_s"]
    pd.testing.assert_frame_equal(on_ray.devices[columns], local.devices[columns])
    pd.testing.assert_frame_equal(
        on_ray.rounds[["sim_round_s", "sim_elapsed_s"]], local.rounds[["sim_round_s", "sim_elapsed_s"]]
    )


def test_a_second_run_in_the_same_process_starts_warm_and_gives_the_same_results(tmp_path):
    """fedsim.run keeps Ray and its hosts for the next run in the process (a notebook's next cell):
    the second run reuses them (no TensorFlow import, no conversion) and its tables equal the first's;
    a run of another shape lets the parked hosts go instead of waiting for their CPUs."""
    settings = dict(dataset="toy_images", toy_samples=20, devices=6, rounds=2, seed=3, hosts=2, progress=False)
    first = fedsim.run(out=str(tmp_path / "a"), **settings)
    second = fedsim.run(out=str(tmp_path / "b"), **settings)
    assert second.meta["startup_s"]["warm"] is True
    assert second.meta["startup_s"]["total"] < first.meta["startup_s"]["total"] or first.meta["startup_s"]["warm"]
    columns = ["round", "test_accuracy", "test_loss", "train_loss", "samples", "bytes_up"]
    assert second.rounds[columns].equals(first.rounds[columns])
    assert (second.path / "global.ckpt").read_bytes() == (first.path / "global.ckpt").read_bytes()
    other = fedsim.run(out=str(tmp_path / "c"), **{**settings, "hosts": 1})
    assert other.meta["startup_s"]["warm"] is False and other.meta["status"] == "completed"
    # fedsim.release(): the parked hosts and the Ray session are let go now, not at exit
    import ray

    from fedsim.engine.ray_session import SESSION

    assert SESSION.parked and ray.is_initialized()
    fedsim.release()
    assert not SESSION.parked and not ray.is_initialized()
    assert fedsim.run(out=str(tmp_path / "d"), **settings).meta["startup_s"]["warm"] is False


def test_the_cluster_route_with_ray_start_and_an_explicit_address(tmp_path):
    """`ray start --head` (token authentication on, as Ray 2.60 starts it) on a free port, then
    `fedsim run --address 127.0.0.1:PORT`: the run joins it and prints only fedsim's lines. Only the
    processes of that head (they carry its own --temp-dir) and their children are stopped after."""
    import os
    import shutil
    import signal
    import socket
    import tempfile

    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="fedsim-head-", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
    started = subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedsim.cli",
                "run",
                "--address",
                f"127.0.0.1:{port}",
                "--dataset",
                "toy_images",
                "--toy-samples",
                "20",
                "--devices",
                "4",
                "--rounds",
                "1",
                "--out",
                str(tmp_path / "run"),
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert all(line.startswith("fedsim") for line in lines), lines
        assert fedsim.load_run(tmp_path / "run").meta["status"] == "completed"
    finally:
        head = [p for p in psutil.process_iter(["cmdline"]) if temp in " ".join(p.info["cmdline"] or [])]
        family = {p.pid: p for p in head}
        for p in head:
            try:
                family.update({c.pid: c for c in p.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
        for p in family.values():
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(list(family.values()), timeout=20)
        shutil.rmtree(temp, ignore_errors=True)
