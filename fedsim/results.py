"""The run folder: config.json, rounds.parquet, devices.parquet, model.tflite, global.ckpt.

Every file is written atomically (to a temporary name, then renamed) after every round, so a killed
run leaves complete tables up to its last finished round. `load_run` / `load_runs` read them back
into pandas.
"""

from __future__ import annotations

import datetime as dt
import glob as globlib
import json
import os
import platform
import shutil
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute, for filtering tables on resume
import pyarrow.parquet as pq

CONFIG_FILE = "config.json"
ROUNDS_FILE = "rounds.parquet"
DEVICES_FILE = "devices.parquet"
MODEL_FILE = "model.tflite"
CHECKPOINT_FILE = "global.ckpt"
PARTITION_FILE = "partition.parquet"
ARTIFACT_FILE = "artifact.json"  # the artifact report (fedsim inspect): signatures, ops, sizes, latency
RESUME_DIR = "resume"  # resume/round-K.ckpt: the checkpoint a resume starts from (removed when complete)

ROUND_COLUMNS = [
    "round", "test_accuracy", "test_loss", "train_loss", "device_acc_mean", "device_acc_p10", "device_acc_p90",
    "devices_selected", "devices_reported",
    "devices_accepted", "samples", "wall_s", "hosts_s", "aggregate_s", "evaluate_s", "elapsed_s",
    "bytes_up", "bytes_down",
]
DEVICE_COLUMNS = [
    "round", "device_id", "host", "samples", "train_loss", "train_s", "checkpoint_bytes", "status", "reason",
    "test_accuracy",
]


class RunFolderError(FileExistsError):
    """The run folder exists and is not empty: fedsim never overwrites a run."""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist, key in (("fedsim", "fedsim"), ("tensorflow-cpu", "tensorflow"), ("tensorflow", "tensorflow"),
                      ("ray", "ray"), ("numpy", "numpy"), ("pandas", "pandas"), ("keras", "keras")):
        if key in out:
            continue
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def default_out(name: str, root: str | os.PathLike[str] = "results") -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path(root) / name / stamp


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_parquet(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _atomic_arrow(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _arrow_table(rows: list[dict[str, Any]], columns: list[str], schema: pa.Schema | None = None) -> pa.Table:
    """Rows -> an Arrow table with exactly `columns`, in that order (missing values are null)."""
    return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema)


def claim_run_folder(out: str | os.PathLike[str]) -> Path:
    """Create `out` for a new run; refuse one that exists and is not empty."""
    path = Path(out)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunFolderError(f"--out {path} already exists and is not empty; fedsim never overwrites a run, pick another folder")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if created:
        _CREATED.add(path.resolve())
    return path


_CREATED: set[Path] = set()  # run folders this process made (a failed start may remove them again)


class RunWriter:
    """Writes one run folder. Tables are rewritten whole after each round (they are small).

    A round's files are written on a background thread while the next round runs on the hosts (the
    coordinator would otherwise leave them idle for the write); at most one write is in flight, so a
    crash loses at most the round that had just finished, and every completed write is whole.
    """

    def __init__(self, path: Path, meta: dict[str, Any], resume_from: int | None = None) -> None:
        self.path = path
        self.meta = dict(meta)
        self.rounds: list[dict[str, Any]] = []
        # One Arrow table per round: rewriting the devices table concatenates them (no copy) and
        # encodes once, instead of rebuilding a DataFrame from every row of every round.
        self.device_tables: list[pa.Table] = []
        if resume_from is not None:
            self._load_tables(resume_from)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsim-writer")
        self._pending: Future[None] | None = None
        self.write_meta(status="running")

    def _load_tables(self, rounds_completed: int) -> None:
        """Take the tables up to `rounds_completed`; rows of a later round whose checkpoint was not
        committed are dropped (that round is run again, with the same result)."""
        if rounds_completed == 0:
            return
        rounds = pd.read_parquet(self.path / ROUNDS_FILE)
        self.rounds = rounds[rounds["round"] <= rounds_completed].to_dict("records")
        devices = pq.read_table(self.path / DEVICES_FILE)
        mask = pa.compute.less_equal(devices["round"], pa.scalar(rounds_completed, devices.schema.field("round").type))
        self.device_tables = [devices.filter(mask)]

    def flush(self) -> None:
        """Wait for the write in flight; re-raise its error, if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def write_meta(self, **changes: Any) -> None:
        self.flush()
        self.meta.update(changes)
        _atomic_write(self.path / CONFIG_FILE, json.dumps(self.meta, indent=2, default=str).encode())

    def write_model(self, artifact: bytes) -> None:
        _atomic_write(self.path / MODEL_FILE, artifact)

    def write_artifact_report(self, report: dict[str, Any]) -> None:
        _atomic_write(self.path / ARTIFACT_FILE, json.dumps(report, indent=2, default=float).encode())

    def discard(self) -> None:
        """Remove what this writer wrote (a run that never completed a round), and the folder if this
        process created it; an empty folder the user made stays."""
        for name in (CONFIG_FILE, MODEL_FILE, ARTIFACT_FILE, PARTITION_FILE, ROUNDS_FILE, DEVICES_FILE,
                     CHECKPOINT_FILE):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / RESUME_DIR, ignore_errors=True)
        if self.path.resolve() in _CREATED and not any(self.path.iterdir()):
            self.path.rmdir()

    def write_partition(self, counts: np.ndarray, test_sizes: np.ndarray | None = None) -> None:
        """partition.parquet: device_id, samples (trained on), test_samples (its own test split), and
        one count column per label of the training samples (label_0, ...)."""
        frame = pd.DataFrame(counts, columns=[f"label_{c}" for c in range(counts.shape[1])])
        frame.insert(0, "test_samples", test_sizes if test_sizes is not None else 0)
        frame.insert(0, "samples", counts.sum(axis=1))
        frame.insert(0, "device_id", np.arange(len(counts)))
        _atomic_parquet(self.path / PARTITION_FILE, frame)

    def record_round(self, round_row: dict[str, Any], device_rows: list[dict[str, Any]], global_checkpoint: bytes) -> None:
        self.rounds.append(round_row)
        self.flush()
        self._pending = self._pool.submit(self._write_round, list(self.rounds), device_rows, global_checkpoint)

    def _write_round(self, rounds: list[dict[str, Any]], device_rows: list[dict[str, Any]], checkpoint: bytes) -> None:
        # Straight to Arrow (no DataFrame): this thread shares the CPU with the hosts' next round.
        schema = self.device_tables[0].schema if self.device_tables else None
        table = _arrow_table(device_rows, DEVICE_COLUMNS, schema)
        self.device_tables.append(table)
        round_num = rounds[-1]["round"]
        # Commit order, so that a kill at any point leaves a resumable folder: the round's checkpoint
        # under its own name, the tables, then config.json's rounds_completed (the commit point),
        # then the user-facing global.ckpt, then the previous round's checkpoint is dropped.
        resume = self.path / RESUME_DIR
        resume.mkdir(exist_ok=True)
        _atomic_write(resume / f"round-{round_num}.ckpt", checkpoint)
        _atomic_arrow(self.path / DEVICES_FILE, pa.concat_tables(self.device_tables))
        _atomic_arrow(self.path / ROUNDS_FILE, _arrow_table(rounds, ROUND_COLUMNS))
        self.meta["rounds_completed"] = round_num
        _atomic_write(self.path / CONFIG_FILE, json.dumps(self.meta, indent=2, default=str).encode())
        _atomic_write(self.path / CHECKPOINT_FILE, checkpoint)
        for old in resume.glob("round-*.ckpt"):
            if old.name != f"round-{round_num}.ckpt":
                old.unlink(missing_ok=True)

    def close(self) -> None:
        self.flush()
        self._pool.shutdown()
        if self.meta.get("status") == "completed":  # nothing left to resume: global.ckpt is the model
            shutil.rmtree(self.path / RESUME_DIR, ignore_errors=True)


def resume_checkpoint(path: Path, rounds_completed: int) -> bytes:
    """The committed global checkpoint after `rounds_completed` rounds of the run in `path`."""
    f = path / RESUME_DIR / f"round-{rounds_completed}.ckpt"
    if not f.is_file():
        raise RunFolderError(f"{path}: no checkpoint for round {rounds_completed} ({f} is missing); cannot resume")
    return f.read_bytes()


@dataclass
class Run:
    """A finished (or interrupted) run, read back: its folder, settings and tables."""

    path: Path
    meta: dict[str, Any]
    rounds: pd.DataFrame
    devices: pd.DataFrame
    partition: pd.DataFrame  # device_id, samples, label_0..label_{C-1}: what each device holds

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @property
    def artifact(self) -> dict[str, Any] | None:
        """The artifact report (artifact.json): signatures, ops, sizes, latency on the run's machine."""
        f = self.path / ARTIFACT_FILE
        return json.loads(f.read_text()) if f.is_file() else None

    @property
    def final_accuracy(self) -> float:
        return float(self.rounds["test_accuracy"].iloc[-1]) if len(self.rounds) else float("nan")

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}, status={self.meta.get('status')!r}, rounds={len(self.rounds)}, "
                f"final_accuracy={self.final_accuracy:.4f})")


def load_run(path: str | os.PathLike[str]) -> Run:
    p = Path(path)
    config_file = p / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{p} is not a fedsim run folder (no {CONFIG_FILE})")
    meta = json.loads(config_file.read_text())

    def table(name: str, columns: list[str]) -> pd.DataFrame:
        f = p / name
        return pd.read_parquet(f) if f.is_file() else pd.DataFrame(columns=columns)

    return Run(p, meta, table(ROUNDS_FILE, ROUND_COLUMNS), table(DEVICES_FILE, DEVICE_COLUMNS),
               table(PARTITION_FILE, ["device_id", "samples"]))


def _expand(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in items:
        s = str(item)
        if globlib.has_magic(s):
            out.extend(Path(m) for m in sorted(globlib.glob(s)) if (Path(m) / CONFIG_FILE).is_file())
        elif (Path(s) / CONFIG_FILE).is_file():
            out.append(Path(s))
        elif Path(s).is_dir():  # a folder of runs, e.g. results/<name>/
            out.extend(sorted(c.parent for c in Path(s).rglob(CONFIG_FILE)))
        else:
            raise FileNotFoundError(f"{s}: no fedsim run folder there")
    return out


def load_runs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Rounds of many runs in one tidy table: each row carries its run's folder and config keys."""
    frames = []
    for path in _expand(paths):
        run = load_run(path)
        frame = run.rounds.copy()
        for key, value in run.config.items():
            frame[key] = value
        frame["hosts_used"] = run.meta.get("hosts")
        frame["run"] = str(path)
        frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no fedsim run folders in {paths!r}")
    return pd.concat(frames, ignore_index=True)
