"""The run folder: config.json, rounds.parquet, devices.parquet, model.tflite, global.ckpt.

rounds.parquet and devices.parquet are folders of one parquet part per round (`round-00000001.parquet`),
which pandas reads as one table (`pd.read_parquet(folder / "devices.parquet")`): recording a round
writes that round's rows only, so its cost does not grow with the rounds before it. Every file is
written atomically (to a temporary name, then renamed), so a killed run leaves complete tables up to
its last finished round. `load_run` / `load_runs` read them back into pandas; folders written as
single files by earlier versions load the same way.
"""

from __future__ import annotations

import datetime as dt
import glob as globlib
import io
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
import pyarrow.compute
import pyarrow.dataset
import pyarrow.parquet as pq

CONFIG_FILE = "config.json"
ROUNDS_FILE = "rounds.parquet"
DEVICES_FILE = "devices.parquet"
MODEL_FILE = "model.tflite"
CHECKPOINT_FILE = "global.ckpt"
PARTITION_FILE = "partition.parquet"
FLEET_FILE = "fleet.parquet"  # --fleet: every device's profile
ARTIFACT_FILE = "artifact.json"  # the artifact report (fedsim inspect): signatures, ops, sizes, latency
STATE_FILE = "server_state.npz"  # a stateful strategy's state after the last round (np.load)
RESUME_DIR = "resume"  # resume/round-K.ckpt: the checkpoint a resume starts from (removed when complete)

ROUND_COLUMNS = [
    "round",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "device_acc_mean",
    "device_acc_p10",
    "device_acc_p90",
    "devices_selected",
    "devices_reported",
    "devices_accepted",
    "samples",
    "wall_s",
    "hosts_s",
    "aggregate_s",
    "evaluate_s",
    "elapsed_s",
    "bytes_up",
    "bytes_down",
    "sim_round_s",
    "sim_elapsed_s",
]
DEVICE_COLUMNS = [
    "round",
    "device_id",
    "host",
    "samples",
    "train_loss",
    "train_s",
    "checkpoint_bytes",
    "status",
    "reason",
    "test_accuracy",
    "role",
    "mu",
    "sim_compute_s",
    "sim_comm_s",
    "sim_finish_s",
]
_INT_COLUMNS = {
    "round",
    "device_id",
    "host",
    "samples",
    "checkpoint_bytes",
    "devices_selected",
    "devices_reported",
    "devices_accepted",
    "bytes_up",
    "bytes_down",
}
_STRING_COLUMNS = {"status", "reason", "role"}


def _schema(columns: list[str]) -> pa.Schema:
    """One fixed schema per table, so every round's part has the same types (a round whose reasons
    are all empty must not make the column null-typed)."""

    def kind(c: str) -> pa.DataType:
        return pa.int64() if c in _INT_COLUMNS else pa.string() if c in _STRING_COLUMNS else pa.float64()

    return pa.schema([(c, kind(c)) for c in columns])


ROUND_SCHEMA = _schema(ROUND_COLUMNS)
DEVICE_SCHEMA = _schema(DEVICE_COLUMNS)


def part_name(round_num: int) -> str:
    return f"round-{round_num:08d}.parquet"


def part_round(name: str) -> int | None:
    """The round a part file holds, or None for anything else in the table's folder."""
    if name.startswith("round-") and name.endswith(".parquet"):
        digits = name[len("round-") : -len(".parquet")]
        return int(digits) if digits.isdigit() else None
    return None


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """A table of the run folder as one DataFrame: a folder of per-round parts, or a single file
    (folders of earlier versions); empty with `columns` if there is none yet."""
    if path.is_dir():
        parts = sorted(str(f) for f in path.iterdir() if part_round(f.name) is not None)
        if not parts:
            return pd.DataFrame(columns=columns)
        table = pq.ParquetDataset(parts).read().to_pandas()  # with the first part's schema
        schema = {tuple(ROUND_COLUMNS): ROUND_SCHEMA, tuple(DEVICE_COLUMNS): DEVICE_SCHEMA}.get(tuple(columns))
        if schema is None or set(columns) <= set(table.columns):
            return table
        # The first part was written by an earlier version (a resumed run's) without newer columns:
        # read again with the table's own schema, so they read as missing values instead of vanishing.
        return pyarrow.dataset.dataset(parts, schema=schema, format="parquet").to_table().to_pandas()
    if path.is_file():
        return pd.read_parquet(path)
    return pd.DataFrame(columns=columns)


class RunFolderError(FileExistsError):
    """The run folder exists and is not empty: fedsim never overwrites a run."""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist, key in (
        ("fedsim", "fedsim"),
        ("tensorflow-cpu", "tensorflow"),
        ("tensorflow", "tensorflow"),
        ("ray", "ray"),
        ("numpy", "numpy"),
        ("pandas", "pandas"),
        ("keras", "keras"),
    ):
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
        raise RunFolderError(
            f"--out {path} already exists and is not empty; fedsim never overwrites a run, pick another folder"
        )
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if created:
        _CREATED.add(path.resolve())
    return path


_CREATED: set[Path] = set()  # run folders this process made (a failed start may remove them again)


class RunWriter:
    """Writes one run folder. A round's rows go into their own parquet part of each table.

    A round's files are written on a background thread while the next round runs on the hosts (the
    coordinator would otherwise leave them idle for the write); at most one write is in flight, so a
    crash loses at most the round that had just finished, and every completed write is whole. The
    writer holds no rows of earlier rounds: its memory and each round's write cost stay flat.
    """

    def __init__(self, path: Path, meta: dict[str, Any], resume_from: int | None = None, tracker: Any = None) -> None:
        self.path = path
        self.meta = dict(meta)
        self.tracker = tracker  # fedsim.tracking.Trackers (TensorBoard, MLflow): told each round's row
        if resume_from is not None:
            self._trim_tables(resume_from)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsim-writer")
        self._pending: Future[None] | None = None
        self.write_meta(status="running")

    def _trim_tables(self, rounds_completed: int) -> None:
        """Keep the tables' rows up to `rounds_completed`; rows of a later round whose checkpoint was
        not committed are dropped (that round is run again, with the same result). A table written
        as one file by an earlier version is split into per-round parts first."""
        for name, columns, schema in (
            (ROUNDS_FILE, ROUND_COLUMNS, ROUND_SCHEMA),
            (DEVICES_FILE, DEVICE_COLUMNS, DEVICE_SCHEMA),
        ):
            table = self.path / name
            if table.is_file():
                frame = pd.read_parquet(table)
                legacy = table.with_name(f".{name}.legacy")
                os.replace(table, legacy)
                table.mkdir()
                for round_num, rows in frame.groupby("round", sort=True):
                    if round_num <= rounds_completed:
                        _atomic_arrow(
                            table / part_name(int(round_num)),
                            pa.Table.from_pandas(rows.reindex(columns=columns), schema=schema, preserve_index=False),
                        )
                legacy.unlink()
            elif table.is_dir():
                for f in table.iterdir():
                    r = part_round(f.name)
                    if r is not None and r > rounds_completed:
                        f.unlink()

    def track(self, trackers: Any) -> None:
        """Start the experiment trackers (fedsim.tracking.Trackers) for this folder; MLflow's run id
        goes into config.json with the next write."""
        if trackers:
            self.tracker = trackers.start(self.path, self.meta)

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
        for name in (CONFIG_FILE, MODEL_FILE, ARTIFACT_FILE, PARTITION_FILE, CHECKPOINT_FILE):
            (self.path / name).unlink(missing_ok=True)
        for name in (RESUME_DIR, ROUNDS_FILE, DEVICES_FILE):
            shutil.rmtree(self.path / name, ignore_errors=True)
        if self.path.resolve() in _CREATED and not any(self.path.iterdir()):
            self.path.rmdir()

    def write_fleet(self, profiles: pd.DataFrame) -> None:
        """fleet.parquet: every device's profile on the simulated clock (device_id, speed, bandwidths,
        availability, dropout), beside partition.parquet."""
        _atomic_parquet(self.path / FLEET_FILE, profiles)

    def write_partition(self, counts: np.ndarray, test_sizes: np.ndarray | None = None) -> None:
        """partition.parquet: device_id, samples (trained on), test_samples (its own test split), and
        one count column per label of the training samples (label_0, ...)."""
        frame = pd.DataFrame(counts, columns=[f"label_{c}" for c in range(counts.shape[1])])
        frame.insert(0, "test_samples", test_sizes if test_sizes is not None else 0)
        frame.insert(0, "samples", counts.sum(axis=1))
        frame.insert(0, "device_id", np.arange(len(counts)))
        _atomic_parquet(self.path / PARTITION_FILE, frame)

    def record_round(
        self,
        round_row: dict[str, Any],
        device_rows: list[dict[str, Any]],
        global_checkpoint: bytes,
        state: dict[str, np.ndarray] | None = None,
    ) -> None:
        if self.tracker is not None:
            self.tracker.record(round_row)
        self.flush()
        self._pending = self._pool.submit(self._write_round, round_row, device_rows, global_checkpoint, state)

    def _write_round(
        self,
        round_row: dict[str, Any],
        device_rows: list[dict[str, Any]],
        checkpoint: bytes,
        state: dict[str, np.ndarray] | None = None,
    ) -> None:
        round_num = round_row["round"]
        # Commit order, so that a kill at any point leaves a resumable folder: the round's checkpoint
        # under its own name, the round's table parts, then config.json's rounds_completed (the
        # commit point), then the user-facing global.ckpt, then the previous round's checkpoint is
        # dropped. Parts of a round that never committed are removed on resume.
        resume = self.path / RESUME_DIR
        resume.mkdir(exist_ok=True)
        _atomic_write(resume / f"round-{round_num}.ckpt", checkpoint)
        keep = {f"round-{round_num}.ckpt"}
        if state:  # the strategy's server state (momentum, moments), so that a resume continues it
            _atomic_write(resume / f"round-{round_num}.{STATE_FILE}", _npz(state))
            keep.add(f"round-{round_num}.{STATE_FILE}")
        for name, rows, columns, schema in (
            (DEVICES_FILE, device_rows, DEVICE_COLUMNS, DEVICE_SCHEMA),
            (ROUNDS_FILE, [round_row], ROUND_COLUMNS, ROUND_SCHEMA),
        ):
            folder = self.path / name
            folder.mkdir(exist_ok=True)
            # Straight to Arrow (no DataFrame): this thread shares the CPU with the hosts' next round.
            _atomic_arrow(folder / part_name(round_num), _arrow_table(rows, columns, schema))
        self.meta["rounds_completed"] = round_num
        _atomic_write(self.path / CONFIG_FILE, json.dumps(self.meta, indent=2, default=str).encode())
        _atomic_write(self.path / CHECKPOINT_FILE, checkpoint)
        if state:
            _atomic_write(self.path / STATE_FILE, _npz(state))
        for old in resume.iterdir():
            if old.name not in keep:
                old.unlink(missing_ok=True)

    def close(self) -> None:
        self.flush()
        self._pool.shutdown()
        if self.tracker is not None:
            self.tracker.close(self.meta)
        if self.meta.get("status") == "completed":  # nothing left to resume: global.ckpt is the model
            shutil.rmtree(self.path / RESUME_DIR, ignore_errors=True)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def resume_state(path: Path, rounds_completed: int, finished: bool = False) -> dict[str, np.ndarray]:
    """The strategy's server state committed with round `rounds_completed` ({} if it keeps none);
    of a finished run, the state it ended with."""
    f = path / STATE_FILE if finished else path / RESUME_DIR / f"round-{rounds_completed}.{STATE_FILE}"
    if not f.is_file():
        return {}
    with np.load(f) as data:
        return {k: data[k] for k in data.files}


def resume_checkpoint(path: Path, rounds_completed: int, finished: bool = False) -> bytes:
    """The committed global checkpoint after `rounds_completed` rounds of the run in `path` (of a
    finished run: its global.ckpt)."""
    f = path / CHECKPOINT_FILE if finished else path / RESUME_DIR / f"round-{rounds_completed}.ckpt"
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

    def keras_model(self, **kwargs: Any) -> Any:
        """The trained Keras model (fedsim.load_model of this folder; loads TensorFlow)."""
        from fedsim.artifact import load_model

        return load_model(self.path, **kwargs)

    @property
    def final_accuracy(self) -> float:
        """Test accuracy of the last evaluated round (with --eval-every, rounds in between have none)."""
        scored = self.rounds["test_accuracy"].dropna()
        return float(scored.iloc[-1]) if len(scored) else float("nan")

    def __repr__(self) -> str:
        return (
            f"Run({str(self.path)!r}, status={self.meta.get('status')!r}, rounds={len(self.rounds)}, "
            f"final_accuracy={self.final_accuracy:.4f})"
        )


def load_run(path: str | os.PathLike[str]) -> Run:
    p = Path(path)
    config_file = p / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{p} is not a fedsim run folder (no {CONFIG_FILE})")
    meta = json.loads(config_file.read_text())

    return Run(
        p,
        meta,
        read_table(p / ROUNDS_FILE, ROUND_COLUMNS),
        read_table(p / DEVICES_FILE, DEVICE_COLUMNS),
        read_table(p / PARTITION_FILE, ["device_id", "samples"]),
    )


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
        frame["strategy"] = run.meta.get("strategy_name", run.config.get("strategy"))  # a custom one by name
        frame["status"] = run.meta.get("status")  # completed, interrupted, failed, running
        frame["hosts_used"] = run.meta.get("hosts")
        frame["run"] = str(path)
        frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no fedsim run folders in {paths!r}")
    return pd.concat(frames, ignore_index=True)
