"""Nothing lost, nothing mixed, nothing silently wrong: each finding of the reliability audit as a test
that fails if it comes back (races on one folder, damaged parts, interrupted extensions, half-made
folders, a full disk, settings that mean nothing, misleading messages, stale files, and the same
command giving the same tables with the simulated clock)."""

from __future__ import annotations

import gzip
import json
import math
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import StopAt

import fedsim
from fedsim.experiment.config import Config, ConfigError
from fedsim.results import RunFolderError, claim_run_folder
from fedsim.results.folder import CLAIM_FILE, release_claim

# Every round commits (the runs here are killed after a given round); tests of --commit-every set their own.
TOY = dict(dataset="toy_images", toy_samples=20, devices=6, rounds=4, seed=2, progress=False, commit_every="1")
COLUMNS = ["round", "test_accuracy", "test_loss", "train_loss", "samples", "bytes_up"]


# ---- 1. two runs, one folder --------------------------------------------------------------------
def _claim(path, barrier, results, done):
    barrier.wait()
    try:
        claim_run_folder(path)
        results.put("won")
    except RunFolderError as e:
        results.put(str(e))
    done.wait()  # the winner keeps its claim (as a running run does) until every process has tried


def test_two_processes_racing_for_one_folder_cannot_both_get_it(tmp_path):
    """Eight processes released at one instant claim one --out: exactly one wins, the others are
    told another run claimed it (before, both runs wrote into the folder and mixed their tables)."""
    ctx = multiprocessing.get_context("fork")
    for attempt in range(5):
        target = tmp_path / f"race-{attempt}"
        barrier, results, done = ctx.Barrier(8), ctx.Queue(), ctx.Barrier(8)
        procs = [ctx.Process(target=_claim, args=(target, barrier, results, done)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        outcomes = [results.get(timeout=5) for _ in procs]
        assert outcomes.count("won") == 1, outcomes
        losers = [o for o in outcomes if o != "won"]
        assert all("another fedsim" in o or "already exists" in o for o in losers), losers


def test_a_taken_default_name_gets_a_suffix(tmp_path):
    stamp = tmp_path / "results" / "name" / "20261204-120000"
    first = claim_run_folder(stamp, free_name=True)
    second = claim_run_folder(stamp, free_name=True)  # while the first run holds its folder
    assert first == stamp and second == stamp.with_name(stamp.name + "-2")
    with pytest.raises(RunFolderError, match="another fedsim process"):
        claim_run_folder(stamp)  # a name the user chose is never changed
    release_claim(first)
    (first / "config.json").write_text(json.dumps({"config": {}, "rounds_completed": 3}))
    with pytest.raises(RunFolderError, match="already exists and is not empty"):
        claim_run_folder(stamp)


# ---- 2. damaged table parts ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    return fedsim.run(out=str(root / "whole"), engine=fedsim.LocalEngine(2), **TOY)


def _cut(tmp_path, stop):
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAt(stop), **TOY)
    return tmp_path / "cut"


def test_parts_are_fsynced_before_the_round_commits(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    run = fedsim.run(out=str(tmp_path / "r"), engine=fedsim.LocalEngine(), **{**TOY, "rounds": 1})
    names = {Path(p).name for p in synced}
    # the model is synced as the round's checkpoint; global.ckpt is a second name of that file
    for expected in (".round-00000001.parquet.tmp", ".round-1.ckpt.tmp", ".config.json.tmp"):
        assert expected in names, names
    assert str(run.path) in synced or str(run.path / "rounds.parquet") in synced  # the folders too


def test_a_damaged_last_round_is_cut_back_and_run_again(tmp_path, uninterrupted):
    folder = _cut(tmp_path, 4)  # rounds 1-3 committed
    part = folder / "devices.parquet" / "round-00000003.parquet"
    part.write_bytes(part.read_bytes()[:40])  # truncated, as a power cut can leave an unsynced file
    with pytest.raises(fedsim.RunFolderError, match="devices.parquet/round-00000003.parquet"):
        fedsim.load_run(folder)  # one line naming the part, not ArrowInvalid
    resumed = fedsim.resume(folder, engine=fedsim.LocalEngine(2))
    assert resumed.meta["status"] == "completed"
    assert resumed.rounds[COLUMNS].equals(uninterrupted.rounds[COLUMNS])
    assert (resumed.path / "global.ckpt").read_bytes() == (uninterrupted.path / "global.ckpt").read_bytes()


def test_damage_further_back_is_named_and_load_runs_skips_that_run(tmp_path, uninterrupted):
    folder = _cut(tmp_path, 4)
    part = folder / "rounds.parquet" / "round-00000001.parquet"
    part.write_bytes(b"not parquet")
    with pytest.raises(fedsim.RunFolderError, match=r"round\(s\) 1: rounds.parquet/round-00000001.parquet"):
        fedsim.resume(folder, engine=fedsim.LocalEngine(2))
    shutil.copytree(uninterrupted.path, tmp_path / "good")
    with pytest.warns(UserWarning, match="skipping .*cut.*damaged table part"):
        table = fedsim.load_runs(tmp_path)
    assert set(table["run"]) == {str(tmp_path / "good")}


def test_a_damaged_last_commit_of_several_rounds_is_cut_back_to_the_commit_before(tmp_path, uninterrupted, capsys):
    """--commit-every 2: a commit's part holds its two rounds; damage in the last commit's part cuts
    the run back to the commit before (round 2), and the resume runs rounds 3-4 again."""
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAt(6), **{**TOY, "rounds": 6, "commit_every": "2"})
    folder = tmp_path / "cut"
    assert sorted(f.name for f in (folder / "rounds.parquet").iterdir()) == [
        "round-00000002.parquet",
        "round-00000004.parquet",
    ]
    part = folder / "rounds.parquet" / "round-00000004.parquet"
    part.write_bytes(part.read_bytes()[:40])
    resumed = fedsim.resume(folder, engine=fedsim.LocalEngine(2), rounds=4)
    assert "rounds 3-4's table parts are damaged" in capsys.readouterr().err
    assert resumed.rounds[COLUMNS].equals(uninterrupted.rounds[COLUMNS])
    assert (resumed.path / "global.ckpt").read_bytes() == (uninterrupted.path / "global.ckpt").read_bytes()


def test_a_missing_part_of_an_earlier_commit_is_named(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAt(6), **{**TOY, "rounds": 6, "commit_every": "2"})
    (tmp_path / "cut" / "rounds.parquet" / "round-00000002.parquet").unlink()
    with pytest.raises(RunFolderError, match=r"round\(s\) 1, 2: rounds.parquet/round-00000001.parquet \(missing\)"):
        fedsim.resume(tmp_path / "cut", engine=fedsim.LocalEngine(2))


# ---- 3. an interrupted or failed extension ------------------------------------------------------
@pytest.mark.parametrize("error", [KeyboardInterrupt(), RuntimeError("host lost")])
def test_an_interrupted_or_failed_extension_can_be_resumed(tmp_path, uninterrupted, error):
    fedsim.run(out=str(tmp_path / "s"), engine=fedsim.LocalEngine(2), **{**TOY, "rounds": 2})
    with pytest.raises(type(error)):
        fedsim.resume(tmp_path / "s", engine=StopAt(3, error), rounds=4)
    meta = json.loads((tmp_path / "s" / "config.json").read_text())
    assert meta["status"] in ("interrupted", "failed") and meta["rounds_completed"] == 2
    resumed = fedsim.resume(tmp_path / "s", engine=fedsim.LocalEngine(2))  # before: "no checkpoint for round 2"
    assert resumed.rounds[COLUMNS].equals(uninterrupted.rounds[COLUMNS])


# ---- 5. half-made folders -----------------------------------------------------------------------
def test_ctrl_c_in_round_one_with_a_fleet_leaves_no_folder(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "r"), engine=StopAt(1), fleet="uniform", **TOY)
    assert not (tmp_path / "r").exists()  # fleet.parquet and the claim went too


def test_a_folder_killed_during_start_up_restarts_with_the_same_command(tmp_path, uninterrupted):
    """SIGKILL during start-up leaves config.json (and temporary files); the same command, and
    --resume, both start the run over there (before: one said 'start it again', the other 'exists')."""
    folder = tmp_path / "r"
    folder.mkdir()
    meta = dict(uninterrupted.meta, status="running")
    meta.pop("rounds_completed", None)
    (folder / "config.json").write_text(json.dumps(meta))
    (folder / ".model.tflite.tmp").write_bytes(b"half")
    (folder / CLAIM_FILE).write_text(json.dumps({"pid": 999_999_999}))  # its process is gone: no lock
    again = fedsim.run(out=str(folder), engine=fedsim.LocalEngine(2), **TOY)
    assert again.rounds[COLUMNS].equals(uninterrupted.rounds[COLUMNS])
    assert not (folder / ".model.tflite.tmp").exists()
    # and --resume on such a folder does the same
    other = tmp_path / "o"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**meta, "config": {**meta["config"]}}))
    resumed = fedsim.resume(other, engine=fedsim.LocalEngine(2))
    assert resumed.rounds[COLUMNS].equals(uninterrupted.rounds[COLUMNS])


def test_a_folder_a_live_process_claimed_is_not_taken(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    holder = (
        "import fcntl, json, os, sys, time\n"
        f"fd = os.open({str(folder / CLAIM_FILE)!r}, os.O_CREAT | os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, json.dumps({'pid': os.getpid()}).encode())\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    (folder / "config.json").write_text(json.dumps({"config": {}, "status": "running"}))
    sleeper = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert sleeper.stdout.readline().strip() == "held"
        with pytest.raises(RunFolderError, match=f"another fedsim process \\(pid {sleeper.pid}\\)"):
            claim_run_folder(folder)
        with pytest.raises(RunFolderError, match="another fedsim process"):
            fedsim.resume(folder)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert claim_run_folder(folder) == folder  # its lock went with it


def test_files_of_others_are_never_removed(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="already exists and is not empty"):
        claim_run_folder(folder)
    assert (folder / "notes.txt").read_text() == "mine"


# ---- 7. a full disk, and other one-line errors --------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1800k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(small_disk):
    out = small_disk / "run"
    with pytest.raises(RunFolderError, match="no space left on the device holding .*run; rounds 1-\\d+ are saved"):
        fedsim.run(out=str(out), engine=fedsim.LocalEngine(), **{**TOY, "rounds": 40})
    leftovers = [p.name for p in out.rglob("*.tmp")]
    assert not leftovers
    meta = json.loads((out / "config.json").read_text())
    assert meta["status"] == "failed" and meta["rounds_completed"] >= 1
    assert len(fedsim.load_run(out).rounds) == meta["rounds_completed"]


def test_bad_folders_and_files_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="cannot create the folder"):
        claim_run_folder(tmp_path / "file" / "run")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        claim_run_folder(tmp_path / "file")
    run_dir = tmp_path / "cfg"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"config": {"run": {"devi')  # truncated
    with pytest.raises(RunFolderError, match="config.json: unreadable"):
        fedsim.load_run(run_dir)
    toml = tmp_path / "bin.toml"
    toml.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="bin.toml"):
        Config.from_toml(toml)


def test_a_damaged_checkpoint_at_resume_is_one_line_and_changes_nothing(tmp_path):
    run = fedsim.run(out=str(tmp_path / "r"), engine=fedsim.LocalEngine(), **{**TOY, "rounds": 2})
    ckpt = run.path / "global.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:100] + b"\0" * 50 + ckpt.read_bytes()[150:])
    before = (run.path / "config.json").read_text()
    with pytest.raises(RunFolderError, match="checkpoint of round 2 .* is damaged"):
        fedsim.resume(run.path, engine=fedsim.LocalEngine(), rounds=3)
    assert (run.path / "config.json").read_text() == before  # still "completed", not "failed"


def test_a_damaged_fashion_mnist_gzip_is_one_line(tmp_path):
    from fedsim.data import DataError
    from fedsim.data.fashion_mnist import read_idx

    body = gzip.compress(b"\x00\x00\x08\x01" + (4).to_bytes(4, "big") + b"abcd")
    bad = bytearray(body)
    bad[12] ^= 0xFF  # inside the deflate stream
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(bad))
    with pytest.raises(DataError, match="not a readable gzip IDX file"):
        read_idx(path)


def test_sigterm_stops_a_cli_run_like_ctrl_c(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedsim.cli",
            "run",
            "--dataset",
            "toy_images",
            "--devices",
            "4",
            "--rounds",
            "2000",
            "--engine",
            "local",
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not _rounds_done(out):
        time.sleep(0.5)
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and f"continue with: fedsim run --resume {out}" in err
    assert json.loads((out / "config.json").read_text())["status"] == "interrupted"


def _rounds_done(out: Path) -> int:
    try:
        return int(json.loads((out / "config.json").read_text()).get("rounds_completed") or 0)
    except (OSError, ValueError):
        return 0


# ---- 4. settings that make meaningless runs -----------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (dict(lr=math.inf), "--lr must be a positive number"),
        (dict(strategy="fedprox", mu=math.inf), "--mu must be at least 0"),
        (dict(device_optimizer="adam", device_epsilon=math.inf), "--device-epsilon must be a positive number"),
        (dict(partition="dirichlet:nan"), "the dirichlet argument must be a positive number"),
        (dict(seed=2**32), r"--seed must be in \[0, 4294967295\]"),
        (dict(fleet="phones", over_select=math.inf), "--over-select must be at least 1"),
        (dict(strategy="qfedavg", q=math.inf), "--q must be at least 0"),
        (dict(dataset="toy_images", toy_samples=1_000_000), r"--toy-samples must be in \[1, 100000\]"),
    ],
)
def test_settings_outside_their_range_are_refused(settings, words):
    with pytest.raises(ConfigError, match=words):
        Config(**settings)


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        (dict(byzantine=0.1, attack="signflip"), r"--byzantine 0.1 of 4 devices rounds to no attacker; use at least"),
        (dict(byzantine=0.9, attack="alie"), "every one an attacker; use at most --byzantine 0.75"),
        (dict(strategy="multikrum", krum_m=100), "--krum-m 100 exceeds the 4 - 0 = 4 updates"),
        (dict(strategy="krum", assumed_byzantine=10), "--assumed-byzantine 10 needs more than 4 updates a round"),
        (dict(strategy="bulyan", assumed_byzantine=1), r"f <= \(n - 3\) / 4 = 0"),
    ],
)
def test_settings_that_would_be_silently_changed_are_refused_with_what_works(tmp_path, settings, words):
    with pytest.raises(ConfigError, match=words):
        fedsim.run(out=str(tmp_path / "r"), engine=fedsim.LocalEngine(), **{**TOY, "devices": 4}, **settings)
    assert not (tmp_path / "r").exists()  # refused before any work


def test_labels_and_classes_that_cannot_be_trained_on_are_refused():
    from fedsim.data import DataError

    x = np.zeros((4, 3), np.float32)
    with pytest.raises(DataError, match=r"labels must be class ids in \[0, 100000\)"):
        fedsim.ArrayDataset(x, np.array([0, 1, 2**32, 1], np.int64), x, np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match="num_classes must be an integer from 2 to 100000"):
        fedsim.ArrayDataset(x, np.array([0, 1, 0, 1]), x, np.array([0, 1, 0, 1]), num_classes=10**9)
    tokens = np.array([[0, 5], [2**30, 1]], np.int64)
    with pytest.raises(DataError, match="vocabularies of at most 1000000"):
        fedsim.ArrayDataset(tokens, np.array([0, 1]), tokens, np.array([0, 1]))


def test_num_classes_as_a_vector_in_an_npz_is_one_line(tmp_path):
    from fedsim.data import DataError
    from fedsim.data.arrays import load_npz

    x = np.zeros((4, 3), np.float32)
    y = np.array([0, 1, 0, 1])
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x, y_test=y, num_classes=np.array([2, 3]))
    with pytest.raises(DataError, match="num_classes must be one integer"):
        load_npz(tmp_path / "d.npz")


# ---- 6. a port where something other than Ray answers -------------------------------------------
def test_an_address_where_something_else_listens_fails_in_seconds(tmp_path):
    """From the command line, in a fresh process (in this one an earlier test's Ray may still be up)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def answer():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.recv(1024)
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    started = time.time()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "fedsim.cli", "run", "--address", f"127.0.0.1:{port}", "--dataset", "toy_images"]
            + ["--rounds", "1", "--out", str(tmp_path / "r"), "--no-progress"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.close()
    assert time.time() - started < 60
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"127.0.0.1:{port}: something listens there but it is not a Ray cluster" in out.stderr
    assert not (tmp_path / "r").exists()


# ---- 8. messages that say what happened ---------------------------------------------------------
def test_the_min_devices_error_keeps_every_cause_whole(tmp_path):
    from fakes import FakeEngine, make_coordinator

    from fedsim.engine.base import DeviceReport, RoundResult
    from fedsim.loop.coordinator import RoundFailedError

    cause = "x" * 400 + " the real cause"  # before, the message was cut at 300 characters
    engine = FakeEngine(4)
    coordinator = make_coordinator(Config(devices=4, rounds=1, min_devices=2, dataset="toy_images"), engine)
    engine.run_round = lambda *a, **k: RoundResult([DeviceReport(d, 0, 1, "failed", error=cause) for d in range(4)])
    with pytest.raises(RoundFailedError) as e:
        coordinator.run()
    assert "the real cause" in str(e.value)
    assert "no round was completed; fix the cause and run the same command again" in str(e.value)
    assert "rounds 1-0" not in str(e.value)


# ---- 9. stale files -----------------------------------------------------------------------------
def test_resume_keeps_the_artifact_report_the_clock_began_with(tmp_path):
    folder = _cut(tmp_path, 3)
    report = json.loads((folder / "artifact.json").read_text())
    report["latency_ms"]["train"] = 123.0  # as if measured differently at the start
    (folder / "artifact.json").write_text(json.dumps(report))
    fedsim.resume(folder, engine=fedsim.LocalEngine(2))
    assert json.loads((folder / "artifact.json").read_text())["latency_ms"]["train"] == 123.0


def test_the_model_on_disk_is_never_older_than_the_tables(tmp_path):
    """global.ckpt is written before the round commits: a folder killed after any round holds the
    model of the last round its tables show (before, a kill between the two left it a round behind)."""
    folder = _cut(tmp_path, 3)
    run = fedsim.load_run(folder)
    last = int(run.rounds["round"].max())
    assert (folder / "global.ckpt").read_bytes() == (folder / "resume" / f"round-{last}.ckpt").read_bytes()


# ---- 10. same command, same tables, also on the simulated clock ---------------------------------
def test_two_runs_of_one_command_give_the_same_simulated_times(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path / "cache"))
    settings = {**TOY, "fleet": "phones", "per_round": 3}
    one = fedsim.run(out=str(tmp_path / "one"), engine=fedsim.LocalEngine(), **settings)
    two = fedsim.run(out=str(tmp_path / "two"), engine=fedsim.LocalEngine(), **settings)
    assert one.rounds["sim_round_s"].tolist() == two.rounds["sim_round_s"].tolist()
    assert pd.DataFrame.equals(one.devices["sim_finish_s"], two.devices["sim_finish_s"])
    assert "measured at this run's start, cached in" in one.meta["sim_latency_source"]
    assert "measured earlier on this machine" in two.meta["sim_latency_source"]
    assert one.meta["sim_latency_ms"] == two.meta["sim_latency_ms"]
    # keyed by the artifact's identity (the same for every conversion of the model), not its bytes
    identity = json.loads((tmp_path / "one" / "artifact.json").read_text())["identity"]
    assert len(identity) == 64 and len(list((tmp_path / "cache" / "latency").iterdir())) == 1


# ---- 11. defaults that learn --------------------------------------------------------------------
@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedadagrad", "qfedavg"])
def test_every_strategy_learns_on_the_default_workload_with_its_defaults(tmp_path, strategy):
    run = fedsim.run(
        devices=20,
        rounds=3,
        seed=1,
        strategy=strategy,
        out=str(tmp_path / strategy),
        engine=fedsim.LocalEngine(2),
        progress=False,
    )
    assert run.final_accuracy >= 0.6, (strategy, run.rounds["test_accuracy"].tolist())
