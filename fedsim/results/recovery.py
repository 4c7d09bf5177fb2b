"""What a resume builds on, checked before anything is written: the committed rounds' table parts
(a damaged one in the last round cuts the run back a round; elsewhere it is named and the resume
refused), and the model and server state of the last committed round (a finished run's are first
staged under resume/, so that an interrupted or failed extension can itself be resumed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from fedsim.checkpoint import CheckpointError, read_checkpoint
from fedsim.results.durable import atomic_link, atomic_write
from fedsim.results.reader import damaged_parts
from fedsim.results.schema import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DEVICES_FILE,
    RESUME_DIR,
    ROUNDS_FILE,
    STATE_FILE,
    RunFolderError,
    part_name,
    part_round,
)
from fedsim.results.state import read_state


def _checkpoint_file(folder: Path, round_num: int) -> Path:
    return folder / RESUME_DIR / f"round-{round_num}.ckpt"


def _state_file(folder: Path, round_num: int) -> Path:
    return folder / RESUME_DIR / f"round-{round_num}.{STATE_FILE}"


def stage_finished_model(folder: Path, done: int) -> None:
    """A finished run keeps its model as global.ckpt only: link it (and its server state) under
    resume/ as round `done`'s before an extension writes anything."""
    if _checkpoint_file(folder, done).is_file() or not (folder / CHECKPOINT_FILE).is_file():
        return
    (folder / RESUME_DIR).mkdir(exist_ok=True)
    atomic_link(folder / CHECKPOINT_FILE, _checkpoint_file(folder, done))
    if (folder / STATE_FILE).is_file():
        atomic_link(folder / STATE_FILE, _state_file(folder, done))


def committed_rounds(folder: Path, meta: dict[str, Any]) -> int:
    """The rounds a resume builds on: `rounds_completed`, or the commit before it when only the last
    commit's table parts are damaged (or missing) and that commit can be resumed; RunFolderError,
    naming the parts, when the damage reaches further back. A table's part holds the rounds of one
    commit (one round, or those since the previous commit under --commit-every) and is named by the
    committing round; the rounds table has a row a round, so its parts show which rounds they hold."""
    done = int(meta.get("rounds_completed") or 0)
    bad: dict[int, list[str]] = {}  # the committing round of a damaged or missing part -> what is wrong
    commits: dict[int, int] = {}  # the rounds table's parts: committing round -> rounds it holds
    for table in (ROUNDS_FILE, DEVICES_FILE):
        if not (folder / table).is_dir():  # a folder of an earlier version: one file per table
            continue
        damaged = dict(damaged_parts(folder / table))
        for f in sorted((folder / table).iterdir()):
            r = part_round(f.name)
            if r is None or r > done:
                continue
            if f in damaged:
                bad.setdefault(r, []).append(f"{table}/{f.name} ({damaged[f]})")
            elif table == ROUNDS_FILE:
                commits[r] = pq.read_metadata(f).num_rows
    held = {r - k for r, n in commits.items() for k in range(n)}
    for r in sorted(set(range(1, done + 1)) - held - set(bad)):
        # in the damaged part of a later commit, the last commit's part if it is gone, else a part of its own
        later = min((c for c in [*commits, *bad] if c >= r), default=done)
        bad.setdefault(r if later in commits else later, []).append(f"{ROUNDS_FILE}/{part_name(r)} (missing)")
    if not bad:
        return done
    previous = max((r for r in commits if r < done), default=0)
    if set(bad) == {done} and (previous == 0 or _checkpoint_file(folder, previous).is_file()):
        rounds = f"round {done}'s" if previous == done - 1 else f"rounds {previous + 1}-{done}'s"
        print(
            f"fedsim: {folder}: {rounds} table parts are damaged ({'; '.join(bad[done])}); cutting the run back "
            f"to round {previous}, its last intact commit (the rounds after it run again, with the same results)",
            file=sys.stderr,
            flush=True,
        )
        for table in (ROUNDS_FILE, DEVICES_FILE):
            (folder / table / part_name(done)).unlink(missing_ok=True)
        meta["rounds_completed"] = previous
        atomic_write(folder / CONFIG_FILE, json.dumps(meta, indent=2, default=str).encode())
        return previous
    first = min(bad)
    raise RunFolderError(
        f"--resume {folder}: damaged table part(s) of committed round(s) {', '.join(map(str, sorted(bad)))}: "
        f"{'; '.join(bad[first])}; a run keeps the model of its last two commits only, so it cannot be cut back "
        f"to round {first - 1}; its other parts still read with pandas, one file at a time"
    )


def committed_model(folder: Path, done: int) -> tuple[bytes, dict[str, np.ndarray]]:
    """The global checkpoint and server state committed with round `done`, the checkpoint checked
    (RunFolderError, one line, if it is missing or damaged; nothing in the folder changes)."""
    f = _checkpoint_file(folder, done)
    state_file = _state_file(folder, done)
    if not (folder / RESUME_DIR).is_dir():  # a run finished by an earlier fedsim: its global.ckpt
        f, state_file = folder / CHECKPOINT_FILE, folder / STATE_FILE
    if not f.is_file():
        raise RunFolderError(f"--resume {folder}: no checkpoint for round {done} ({f} is missing); cannot resume")
    data = f.read_bytes()
    try:
        read_checkpoint(data)
    except CheckpointError as e:
        raise RunFolderError(f"--resume {folder}: the checkpoint of round {done} ({f.name}) is damaged: {e}") from None
    state: dict[str, np.ndarray] = {}
    if state_file.is_file():
        try:
            state = read_state(state_file)
        except (OSError, ValueError) as e:
            raise RunFolderError(f"--resume {folder}: the server state of round {done} is damaged: {e}") from None
    return data, state
