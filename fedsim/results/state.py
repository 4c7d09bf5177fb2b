"""A committed round's server state on disk: `resume/round-K.server_state.npz`, with the rows of a
`KeyedRows` value (FedBuff's model versions in flight, top-k's error-feedback residuals) stored once
each. The rows a commit adds go into one file, `resume/rows/<key>@K.npy` (rows x width), written
straight from the rows (no stacked copy); the .npz names every row by its id and where it lies
(`<key>@rows`, `<key>@batch`, `<key>@index`). A server step then writes only the rows that are new
(one model version, the cohort's residuals) instead of every row still held (tens of versions,
~12 MB a step; a residual per device that ever trained, 400 KB each). A row is rewritten only by a
writer that has not stored it (the first commit after a resume), into its own commit's file, which
no committed state names before that commit. Every file is written durably. A finished run's
server_state.npz is made whole again (every row inside), since the run folder then keeps no resume/
folder. Folders written before batches (one `<key>-<id>.npy` per row) still read."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fedsim.results.durable import atomic_stream, atomic_write

ROWS_DIR = "rows"
MARK = "@rows"
BATCH = "@batch"  # per row: the commit whose file holds it
INDEX = "@index"  # per row: its place in that file

Stored = dict[str, dict[int, tuple[int, int]]]  # key -> row id -> (batch, index): what a writer has on disk


def _batch_name(key: str, batch: int) -> str:
    return f"{key}@{batch}.npy"


def _batch_file(folder: Path, key: str, batch: int) -> Path:
    return folder / ROWS_DIR / _batch_name(key, batch)


def _legacy_row_file(folder: Path, key: str, row_id: int) -> Path:
    return folder / ROWS_DIR / f"{key}-{row_id}.npy"


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _write_rows(f: BinaryIO, rows: list[np.ndarray]) -> None:  # (rows, width) float32 .npy
    width = len(rows[0])
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (len(rows), width)})
    for row in rows:
        row = np.ascontiguousarray(row, "<f4")
        if len(row) != width:
            raise ValueError(f"rows of one state value differ in width ({len(row)} != {width})")
        f.write(row.data.cast("B"))


def write_state(path: Path, state: dict[str, np.ndarray], batch: int = 0, stored: Stored | None = None) -> set[str]:
    """Write `state` to `path` (an .npz in a resume/ folder). The rows of each KeyedRows value that
    `stored` (updated here) does not hold yet go into one file of commit `batch`. Returns the names
    of the row files the state names (what named_rows would read back from it)."""
    stored = {} if stored is None else stored
    arrays: dict[str, np.ndarray] = {}
    placed: Stored = {}
    for key, value in state.items():
        ids = getattr(value, "row_ids", None)
        if ids is None:
            arrays[key] = value
            continue
        known = stored.get(key, {})
        where: dict[int, tuple[int, int]] = {}
        new: list[np.ndarray] = []
        for row_id, row in zip(ids.tolist(), value):
            if row_id in known:
                where[row_id] = known[row_id]
            else:
                where[row_id] = (batch, len(new))
                new.append(row)
        if new:
            (path.parent / ROWS_DIR).mkdir(exist_ok=True)
            atomic_stream(_batch_file(path.parent, key, batch), partial(_write_rows, rows=new))
        placed[key] = where
        arrays[key + MARK] = np.asarray(ids, np.int64)
        arrays[key + BATCH] = np.array([where[i][0] for i in ids.tolist()], np.int64)
        arrays[key + INDEX] = np.array([where[i][1] for i in ids.tolist()], np.int64)
    atomic_write(path, npz(arrays))
    stored.update(placed)  # only the rows this state names: files of older ones may be pruned
    return {_batch_name(key, b) for key, where in placed.items() for b in {b for b, _ in where.values()}}


def _row_files(folder: Path, saved: dict[str, np.ndarray], key: str) -> list[Path]:
    """The file of every row of `key`, in the ids' order."""
    ids = saved[key + MARK]
    if key + BATCH not in saved:
        return [_legacy_row_file(folder, key, int(i)) for i in ids]
    return [_batch_file(folder, key, int(b)) for b in saved[key + BATCH]]


def read_state(path: Path) -> dict[str, np.ndarray]:
    """The state written by write_state (or a plain .npz), every value a plain array again."""
    with np.load(path) as saved:
        state = {k: saved[k] for k in saved.files}
    for marked in [k for k in state if k.endswith(MARK)]:
        key = marked[: -len(MARK)]
        files = _row_files(path.parent, state, key)
        index = state.pop(key + INDEX, None)
        state.pop(key + BATCH, None)
        state.pop(marked)
        if not files:
            state[key] = np.zeros((0, 0), np.float32)
            continue
        opened = {f: np.load(f, mmap_mode="r") for f in set(files)}
        if index is None:  # one 1-D row per file
            state[key] = np.stack([opened[f] for f in files])
        else:
            state[key] = np.stack([opened[f][int(i)] for f, i in zip(files, index)])
    return state


def named_rows(path: Path) -> set[str]:
    """The row files a state file names (nothing if it is missing or unreadable)."""
    try:
        with np.load(path) as saved:
            arrays = {k: saved[k] for k in saved.files if k.endswith((MARK, BATCH))}
    except (OSError, ValueError):
        return set()
    return {f.name for k in arrays if k.endswith(MARK) for f in _row_files(path.parent, arrays, k[: -len(MARK)])}


def prune_rows(folder: Path, states: list[Path], known: dict[str, set[str]] | None = None) -> None:
    """Remove the row files none of `states` names; `known`: the names some of them name, by state
    file name, as write_state returned them (the others are read from the files)."""
    rows = folder / ROWS_DIR
    if not rows.is_dir():
        return
    known = known or {}
    keep = set().union(*(known[s.name] if s.name in known else named_rows(s) for s in states))
    for f in rows.iterdir():
        if f.name not in keep:
            f.unlink(missing_ok=True)


def make_whole(path: Path, into: Path) -> None:
    """Write `path`'s state with its rows inside to `into` (if it names any; else `into` is untouched)."""
    if named_rows(path):
        atomic_write(into, npz(read_state(path)))
