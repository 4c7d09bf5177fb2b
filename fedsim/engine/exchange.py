"""Large arrays between the coordinator and the hosts on its machine through files in shared memory
(/dev/shm) instead of Ray's object store: the global checkpoint a call restores, and the updates a
host hands back (FedBuff's rows, a host's partial sum). The object store costs each such object a
create, a seal and a release in the raylet, whose CPU the hosts need on a small machine: two
alternating Ray runs of a FedBuff-sized call (2 hosts, a 400 KB checkpoint out, 2 MB of rows back
from each) took 31.7 ms of CPU and 18.5 ms of wall a call through the object store, 25.2 ms and 15.5
ms through files (`experiments/bench_stages.py` measures what it gives a run).

A host joins when it can read the exchange folder's marker (it runs on the coordinator's machine);
hosts elsewhere in a cluster, a machine without /dev/shm, or a full one keep the object store. The
coordinator removes each file once read (a reply) or once the calls that restore it are collected
(a checkpoint), and the folder when the engine closes. No Ray here.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.checkpoint import remove_orphans
from fedsim.engine.base import RoundResult

SHM = Path("/dev/shm")
PREFIX = "fedsim-exchange-"  # then the coordinator's pid
MARKER = "exchange"
MIN_BYTES = 100 * 1024  # smaller objects travel inline in Ray's reply already
FIELDS = ("rows", "weighted_sum")


@dataclass(frozen=True)
class Shared:
    """An array a host left in the exchange folder, in place of the array in its reply."""

    name: str
    dtype: str
    shape: tuple[int, ...]


class Exchange:
    """The coordinator's exchange folder: checkpoints written once and counted out to calls."""

    def __init__(self, folder: Path, token: str) -> None:
        self.folder, self.token = folder, token
        self._written: dict[int, tuple[bytes, Path]] = {}  # id(checkpoint) -> (it, its file)
        self._calls: dict[Path, int] = {}  # checkpoint file -> calls not yet collected
        self._count = 0

    @classmethod
    def open(cls) -> Exchange | None:
        """A new exchange folder in /dev/shm, or None where there is none to write (or
        FEDSIM_EXCHANGE=off asks for the object store)."""
        if os.environ.get("FEDSIM_EXCHANGE", "").lower() == "off":
            return None
        remove_orphans(SHM)  # exchange folders of coordinators that are gone
        try:
            folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=SHM))
            token = secrets.token_hex(8)
            (folder / MARKER).write_text(token)
        except OSError:
            return None
        return cls(folder, token)

    def checkpoint(self, data: bytes, calls: int) -> Path | None:
        """The file of `data` for `calls` more calls to restore (written once while calls need it);
        None if it cannot be written (the caller sends it through the object store)."""
        known = self._written.get(id(data))
        if known is not None and known[0] is data:
            path = known[1]
        else:
            self._count += 1
            path = self.folder / f"global-{self._count}.ckpt"
            try:
                path.write_bytes(data)
            except OSError:
                path.unlink(missing_ok=True)
                return None
            self._written[id(data)] = (data, path)
        self._calls[path] = self._calls.get(path, 0) + calls
        return path

    def collected(self, path: Path) -> None:
        """A call that restored `path` is over; the file goes with the last of them."""
        left = self._calls.get(path, 0) - 1
        if left > 0:
            self._calls[path] = left
            return
        self._calls.pop(path, None)
        self._written = {k: v for k, v in self._written.items() if v[1] != path}
        path.unlink(missing_ok=True)

    def receive(self, result: RoundResult) -> RoundResult:
        """`result` with the arrays its host left in the folder read back (and their files removed)."""
        partials = []
        for p in result.partials:
            changes: dict[str, Any] = {}
            for name in FIELDS:
                value = getattr(p, name)
                if isinstance(value, Shared):
                    path = self.folder / value.name
                    changes[name] = _mapped(path, value)
                    path.unlink()
            partials.append(dataclasses.replace(p, **changes) if changes else p)
        result.partials = partials
        return result

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _mapped(path: Path, shared: Shared) -> np.ndarray:
    """The array in `path` as it lies in shared memory (read-only), not a copy: reading a host's 800 KB
    partial sum into a new array cost the coordinator 0.26 ms a host a round, on the round's critical
    path; the memory goes back when the array does (the file is removed at once)."""
    with open(path, "rb") as f:
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(view, np.dtype(shared.dtype)).reshape(shared.shape)


def joins(folder: Path, token: str) -> bool:
    """Whether a host sees the coordinator's exchange folder (it runs on the same machine)."""
    try:
        return (folder / MARKER).read_text() == token
    except OSError:
        return False


def send(result: RoundResult, folder: Path, prefix: str) -> RoundResult:
    """A host's `result` with its large arrays left in `folder` (each replaced by a `Shared`); an
    array that cannot be written stays in the reply."""
    partials = []
    for i, p in enumerate(result.partials):
        changes: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(p, name)
            if isinstance(value, np.ndarray) and value.nbytes >= MIN_BYTES and value.dtype.kind in "fiu":
                file = f"{prefix}-{i}-{name}"
                try:
                    np.ascontiguousarray(value).tofile(folder / file)
                except OSError:
                    (folder / file).unlink(missing_ok=True)
                    continue
                changes[name] = Shared(file, value.dtype.str, value.shape)
        partials.append(dataclasses.replace(p, **changes) if changes else p)
    result.partials = partials
    return result
