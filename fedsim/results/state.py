"""A committed round's server state on disk: `resume/round-K.server_state.npz`, with the rows of a
`KeyedRows` value (FedBuff's model versions in flight) stored once each, as
`resume/rows/<key>-<id>.npy`, and named in the .npz by their ids (`<key>@rows`). A server step then
writes only the rows that are new (one model version) instead of every version still in flight
(tens of them, ~12 MB a step at 1,000 devices). Every file is written durably; a row file is never
rewritten, because its id always names the same content. A finished run's server_state.npz is made
whole again (every row inside), since the run folder then keeps no resume/ folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fedsim.results.durable import atomic_write

ROWS_DIR = "rows"
MARK = "@rows"


def _row_file(folder: Path, key: str, row_id: int) -> Path:
    return folder / ROWS_DIR / f"{key}-{row_id}.npy"


def _npy(row: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, row)
    return buffer.getvalue()


def npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_state(path: Path, state: dict[str, np.ndarray]) -> None:
    """Write `state` to `path` (an .npz in a resume/ folder), each KeyedRows row once beside it."""
    arrays: dict[str, np.ndarray] = {}
    for key, value in state.items():
        ids = getattr(value, "row_ids", None)
        if ids is None:
            arrays[key] = value
            continue
        (path.parent / ROWS_DIR).mkdir(exist_ok=True)
        for row_id, row in zip(ids.tolist(), value):
            f = _row_file(path.parent, key, row_id)
            if not f.is_file():
                atomic_write(f, _npy(np.asarray(row, np.float32)))
        arrays[key + MARK] = np.asarray(ids, np.int64)
    atomic_write(path, npz(arrays))


def read_state(path: Path) -> dict[str, np.ndarray]:
    """The state written by write_state (or a plain .npz), every value a plain array again."""
    with np.load(path) as saved:
        state = {k: saved[k] for k in saved.files}
    for marked in [k for k in state if k.endswith(MARK)]:
        key, ids = marked[: -len(MARK)], state.pop(marked)
        rows = [np.load(_row_file(path.parent, key, int(i))) for i in ids]
        state[key] = np.stack(rows) if rows else np.zeros((0, 0), np.float32)
    return state


def named_rows(path: Path) -> set[str]:
    """The row files a state file names (nothing if it is missing or unreadable)."""
    try:
        with np.load(path) as saved:
            return {
                _row_file(path.parent, k[: -len(MARK)], int(i)).name
                for k in saved.files
                if k.endswith(MARK)
                for i in saved[k]
            }
    except (OSError, ValueError):
        return set()


def prune_rows(folder: Path, states: list[Path]) -> None:
    """Remove the row files none of `states` names."""
    rows = folder / ROWS_DIR
    if not rows.is_dir():
        return
    keep = set().union(*(named_rows(s) for s in states))
    for f in rows.iterdir():
        if f.name not in keep:
            f.unlink(missing_ok=True)


def make_whole(path: Path, into: Path) -> None:
    """Write `path`'s state with its rows inside to `into` (if it names any; else `into` is untouched)."""
    if named_rows(path):
        atomic_write(into, npz(read_state(path)))
