"""Writing a run folder: config.json, the per-round table parts, model.tflite, global.ckpt, the server
state. Every file is written atomically and durably (fedsim.results.durable: a temporary name, fsync,
rename, fsync of the folder), so a killed run or a power cut leaves complete tables up to its last
committed round."""

from __future__ import annotations

import json
import platform
import shutil
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fedsim.results.durable import atomic_arrow, atomic_link, atomic_parquet, atomic_write, fsync_dir, fsync_file
from fedsim.results.folder import CLAIM_FILE, created_folders, remove_run_files
from fedsim.results.migrate import split_legacy_tables
from fedsim.results.schema import (
    ARTIFACT_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DEVICE_COLUMNS,
    DEVICE_SCHEMA,
    DEVICES_FILE,
    FLEET_FILE,
    PARTITION_FILE,
    RESUME_DIR,
    ROUND_COLUMNS,
    ROUND_SCHEMA,
    ROUNDS_FILE,
    STATE_FILE,
    model_file,
    part_name,
    part_round,
)
from fedsim.results.state import ROWS_DIR, Stored, make_whole, prune_rows, write_state


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
        ("torch", "torch"),
        ("executorch", "executorch"),
    ):
        if key in out:
            continue
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _arrow_table(rows: list[dict[str, Any]], columns: Sequence[str], schema: pa.Schema | None = None) -> pa.Table:
    """Rows -> an Arrow table with exactly `columns`, in that order (missing values are null)."""
    return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema)


class RunWriter:
    """Writes one run folder. A round's rows go into their own parquet part of each table.

    A round's files are written on a background thread while the next round runs on the hosts (the
    coordinator would otherwise leave them idle for the write); at most one write is in flight, so a
    crash loses at most the round that had just finished, and every completed write is whole. The
    writer holds no rows of committed rounds: its memory and each round's write cost stay flat.
    Rounds between commits (--commit-every) are held in memory and written with the next commit,
    in one part of each table named by the committing round.
    """

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        resume_from: int | None = None,
        tracker: Any = None,
        round_columns: list[str] | None = None,
        device_columns: list[str] | None = None,
    ) -> None:
        self.path = path
        self.meta = dict(meta)
        # the tables: their fixed columns, then any the run's stages, instructions and task add (numbers)
        self._columns_given: tuple[list[str], list[str]] = ([], [])
        self.declare(list(round_columns or []), list(device_columns or []))
        self.tracker = tracker  # fedsim.report.tracking.Trackers (TensorBoard, MLflow): told each round's row
        if resume_from is not None:
            self._trim_tables(resume_from)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedsim-writer")
        self._pending: Future[None] | None = None
        self._stored_rows: Stored = {}  # the state rows on disk that the next commit may name again
        self._named_rows: dict[str, set[str]] = {}  # the row files each state file this writer wrote names
        self._held: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []  # rounds since the last commit
        self._committed = resume_from or 0  # the last committed round (its files stay until the next commit's)
        self.write_meta(status="running")

    def _trim_tables(self, rounds_completed: int) -> None:
        """Keep the tables' rows up to `rounds_completed`; rows of a later round whose checkpoint was
        not committed are dropped (that round is run again, with the same result)."""
        split_legacy_tables(self.path, rounds_completed)
        for name in (ROUNDS_FILE, DEVICES_FILE):
            table = self.path / name
            if table.is_dir():
                for f in table.iterdir():
                    r = part_round(f.name)
                    if r is not None and r > rounds_completed:
                        f.unlink()

    def track(self, trackers: Any) -> None:
        """Start the experiment trackers (fedsim.report.tracking.Trackers) for this folder; MLflow's run id
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
        atomic_write(self.path / CONFIG_FILE, json.dumps(self.meta, indent=2, default=str).encode())

    def write_model(self, artifact: bytes) -> None:
        atomic_write(self.path / model_file(artifact), artifact)

    def write_artifact_report(self, report: dict[str, Any], replace: bool = True) -> None:
        if not replace and (self.path / ARTIFACT_FILE).is_file():
            return
        atomic_write(self.path / ARTIFACT_FILE, json.dumps(report, indent=2, default=float).encode())

    def discard(self) -> None:
        """Remove what this writer wrote (a run that never completed a round), and the folder if this
        process created it; an empty folder the user made stays."""
        remove_run_files(self.path)
        (self.path / CLAIM_FILE).unlink(missing_ok=True)  # (its lock is held until the run returns)
        if self.path.resolve() in created_folders() and not any(self.path.iterdir()):
            self.path.rmdir()

    def write_fleet(self, profiles: pd.DataFrame) -> None:
        """fleet.parquet: every device's profile on the simulated clock (device_id, speed, bandwidths,
        availability, dropout), beside partition.parquet."""
        atomic_parquet(self.path / FLEET_FILE, profiles)

    def write_partition(self, counts: np.ndarray, test_sizes: np.ndarray | None = None) -> None:
        """partition.parquet: device_id, samples (trained on), test_samples (its own test split), and
        one count column per label of the training samples (label_0, ...)."""
        frame = pd.DataFrame(counts, columns=[f"label_{c}" for c in range(counts.shape[1])])
        frame.insert(0, "test_samples", test_sizes if test_sizes is not None else 0)
        frame.insert(0, "samples", counts.sum(axis=1))
        frame.insert(0, "device_id", np.arange(len(counts)))
        atomic_parquet(self.path / PARTITION_FILE, frame)

    def declare(self, round_columns: list[str], device_columns: list[str]) -> None:
        """More columns, known once the data is loaded (a text task's perplexity), before any round."""
        given_rounds, given_devices = self._columns_given
        rounds = [*given_rounds, *(c for c in round_columns if c not in given_rounds)]
        devices = [*given_devices, *(c for c in device_columns if c not in given_devices)]
        extra = [c for c in rounds if c not in ROUND_COLUMNS]
        self.round_columns = (*ROUND_COLUMNS, *extra)
        self.round_schema = pa.schema(list(ROUND_SCHEMA) + [(c, pa.float64()) for c in extra])
        more = [c for c in devices if c not in DEVICE_COLUMNS]
        self.device_columns = (*DEVICE_COLUMNS, *more)
        self.device_schema = pa.schema(list(DEVICE_SCHEMA) + [(c, pa.float64()) for c in more])
        self._columns_given = (rounds, devices)

    def record_round(
        self,
        round_row: dict[str, Any],
        device_rows: list[dict[str, Any]],
        global_checkpoint: bytes,
        state: dict[str, np.ndarray] | None = None,
        files: Any = None,
    ) -> None:
        """Commit a round (in the background). `files`: what the commit does to the device state
        folder (fedsim.loop.devicestate.StateFiles: segments synced before it, removed after it)."""
        if self.tracker is not None:
            self.tracker.record(round_row)
        held, self._held = self._held, []
        rounds = [r for r, _ in held] + [round_row]
        devices = [d for _, rows in held for d in rows] + device_rows
        previous, self._committed = self._committed, round_row["round"]
        self.flush()
        self._pending = self._pool.submit(self._write_round, rounds, devices, global_checkpoint, state, files, previous)

    def hold_round(self, round_row: dict[str, Any], device_rows: list[dict[str, Any]]) -> None:
        """A round that does not commit (--commit-every): its rows wait here for the next commit."""
        if self.tracker is not None:
            self.tracker.record(round_row)
        self._held.append((round_row, device_rows))

    def _write_round(
        self,
        round_rows: list[dict[str, Any]],
        device_rows: list[dict[str, Any]],
        checkpoint: bytes,
        state: dict[str, np.ndarray] | None,
        files: Any,
        previous: int,
    ) -> None:
        """Commit the last of `round_rows` (the rows of the rounds held since the previous commit, round
        `previous`, come first: one part of each table holds them all)."""
        round_num = round_rows[-1]["round"]
        if files is not None and files.sync:  # the device state the round's index names, on disk first
            for name in files.sync:
                fsync_file(files.folder / name)
            fsync_dir(files.folder)
        # Commit order, so that a kill at any point leaves a resumable folder: the round's checkpoint
        # under its own name, the round's table parts, the user-facing global.ckpt (so the model on
        # disk is never older than the tables), then config.json's rounds_completed (the commit
        # point), then checkpoints older than the previous commit's are dropped (the previous one
        # stays: a resume can cut a run whose last parts were damaged back to it). Parts of a round
        # that never committed are removed on resume.
        resume = self.path / RESUME_DIR
        resume.mkdir(exist_ok=True)
        atomic_write(resume / f"round-{round_num}.ckpt", checkpoint)
        keep = {f"round-{round_num}.ckpt", f"round-{previous}.ckpt", f"round-{previous}.{STATE_FILE}"}
        state_file = resume / f"round-{round_num}.{STATE_FILE}"
        if state:  # the strategy's server state (momentum, moments), so that a resume continues it
            # (rows that never change, such as model versions and residuals, once each)
            self._named_rows[state_file.name] = write_state(state_file, state, round_num, self._stored_rows)
            keep.add(state_file.name)
        for name, rows, columns, schema in (
            (DEVICES_FILE, device_rows, self.device_columns, self.device_schema),
            (ROUNDS_FILE, round_rows, self.round_columns, self.round_schema),
        ):
            folder = self.path / name
            folder.mkdir(exist_ok=True)
            # Straight to Arrow (no DataFrame): this thread shares the CPU with the hosts' next round.
            atomic_arrow(folder / part_name(round_num), _arrow_table(rows, columns, schema))
        atomic_link(resume / f"round-{round_num}.ckpt", self.path / CHECKPOINT_FILE)  # a second name, not a write
        if state:  # the same file under its user-facing name: a second link, not a second write
            atomic_link(state_file, self.path / STATE_FILE)
        self.meta["rounds_completed"] = round_num
        atomic_write(self.path / CONFIG_FILE, json.dumps(self.meta, indent=2, default=str).encode())
        for name in files.drop if files is not None else ():  # segments no committed round can need
            (files.folder / name).unlink(missing_ok=True)
        for old in resume.iterdir():
            if old.name not in keep and old.name != ROWS_DIR:
                old.unlink(missing_ok=True)
        self._named_rows = {name: rows for name, rows in self._named_rows.items() if name in keep}
        prune_rows(resume, [resume / name for name in keep if name.endswith(STATE_FILE)], self._named_rows)

    def settle(self) -> None:
        """After a failure: the folder as of its last committed round (parts of a round that did not
        commit removed, global.ckpt and the server state back to that round's), so what a reader
        sees agrees with config.json. Best effort: a full disk may refuse it, and a resume settles
        the same way."""
        try:
            self.flush()
        except BaseException:
            pass
        done = int(self.meta.get("rounds_completed") or 0)
        self._trim_tables(done)
        resume = self.path / RESUME_DIR
        if done and (resume / f"round-{done}.ckpt").is_file():
            atomic_link(resume / f"round-{done}.ckpt", self.path / CHECKPOINT_FILE)
            if (resume / f"round-{done}.{STATE_FILE}").is_file():
                atomic_link(resume / f"round-{done}.{STATE_FILE}", self.path / STATE_FILE)

    def close(self) -> None:
        self.flush()
        self._pool.shutdown()
        if self.tracker is not None:
            self.tracker.close(self.meta)
        if self.meta.get("status") == "completed":  # nothing left to resume: global.ckpt is the model
            self.write_meta(model_round=self.meta.get("rounds_completed", 0))  # ... of this round
            done = self.meta.get("rounds_completed", 0)
            if (self.path / RESUME_DIR / f"round-{done}.{STATE_FILE}").is_file():  # rows inside, for an extension
                make_whole(self.path / RESUME_DIR / f"round-{done}.{STATE_FILE}", self.path / STATE_FILE)
            shutil.rmtree(self.path / RESUME_DIR, ignore_errors=True)
