"""The run's index of device state: which segment (fedsim.core.segments) holds each device's latest
state. The state itself never reaches the round loop: hosts write it and read it in the state folder;
the loop only learns which devices a segment holds, tells each host where its devices' state is, and
commits the index with the round (12 bytes a device that keeps state), so that a resume reads
exactly what the committed round left.

A segment is named by the index once the loop has absorbed its devices' rounds (a synchronous
round's end; an asynchronous arrival). Segments nothing names any more are removed once no committed
round could need them: not named by this commit or the one before (a resume may cut back one round),
and not holding the state of a device still in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedsim.core.context import RunContext
from fedsim.core.segments import StateError
from fedsim.engine.base import StateWritten

PREFIX = "device_state."  # the index's keys in a saved server state
SUFFIX = ".seg"


@dataclass(frozen=True)
class StateFiles:
    """What a commit does in the state folder: segments to sync before it, and to remove after it."""

    folder: Path
    sync: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()


@dataclass
class StateIndex:
    """device id -> the segment holding its latest state (-1: it keeps nothing)."""

    folder: Path
    devices: int
    where: np.ndarray = field(init=False)
    names: list[str] = field(default_factory=list)
    pending: dict[int, str] = field(default_factory=dict)  # written by a host, not yet absorbed
    known: set[str] = field(default_factory=set)  # segments on disk that this index knows of
    unsynced: set[str] = field(default_factory=set)
    protected: set[str] = field(default_factory=set)  # named by the previous commit

    def __post_init__(self) -> None:
        self.where = np.full(self.devices, -1, np.int32)
        self._slot: dict[str, int] = {}

    @classmethod
    def for_run(cls, folder: Path, run: RunContext) -> StateIndex:
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder, run.devices)

    def locate(self, device_ids: Iterable[int]) -> dict[int, str]:
        """Where each of `device_ids` has state (those without are left out)."""
        ids = np.fromiter(device_ids, np.int64)
        if not len(self.names) or not len(ids):
            return {}
        slots = self.where[ids]
        return {int(d): self.names[s] for d, s in zip(ids.tolist(), slots.tolist()) if s >= 0}

    def written(self, states: Sequence[StateWritten]) -> None:
        """Segments the hosts wrote; their devices' state counts once `absorb` takes it."""
        for s in states:
            self.known.add(s.segment)
            self.unsynced.add(s.segment)
            for d in s.device_ids:
                self.pending[int(d)] = s.segment

    def absorb(self, device_ids: Iterable[int]) -> None:
        """These devices' rounds are done: their newly written state is now their state."""
        for d in device_ids:
            segment = self.pending.pop(int(d), None)
            if segment is not None:
                slot = self._slot.get(segment)
                if slot is None:
                    slot = self._slot[segment] = len(self.names)
                    self.names.append(segment)
                self.where[int(d)] = slot

    def forget_pending(self) -> None:
        """A synchronous round is over: state written by devices whose round did not count (an attempt
        that was retried) is never absorbed."""
        self.pending.clear()

    def commit(self, final: bool = False) -> tuple[dict[str, np.ndarray], StateFiles]:
        """The index as saved with this commit, and what the commit does in the state folder.
        `final`: the run's last commit (nothing older is kept for a resume to cut back to)."""
        ids = np.flatnonzero(self.where >= 0)
        live_slots = np.unique(self.where[ids]) if len(ids) else np.zeros(0, np.int32)
        live = [self.names[s] for s in live_slots.tolist()]
        # compact the names to the live ones, so the index stays as small as what it names
        remap = np.full(len(self.names) + 1, -1, np.int32)
        remap[live_slots] = np.arange(len(live), dtype=np.int32)
        self.where = remap[self.where]  # (-1 maps to remap[-1], which is -1)
        self.names, self._slot = live, {name: i for i, name in enumerate(live)}
        keep = set(live) | set(self.pending.values()) | (set() if final else self.protected)
        drop = sorted(self.known - keep)
        sync = sorted(self.unsynced & set(live))
        self.known -= set(drop)
        self.unsynced -= set(sync) | set(drop)
        self.protected = set(live)
        saved: dict[str, np.ndarray] = {}
        if len(ids):
            saved = {
                PREFIX + "ids": ids.astype(np.int64),
                PREFIX + "slots": self.where[ids].astype(np.int32),
                PREFIX + "segments": np.array(live, dtype=str),
            }
        return saved, StateFiles(self.folder, tuple(sync), tuple(drop))

    def restore(self, saved: dict[str, np.ndarray]) -> None:
        """The index a committed round saved; every segment now in the folder is known, and those the
        index does not name are removed after the next two commits (a killed run's leftovers)."""
        mine = {k[len(PREFIX) :]: v for k, v in saved.items() if k.startswith(PREFIX)}
        if mine:
            self.names = [str(n) for n in mine["segments"]]
            self._slot = {name: i for i, name in enumerate(self.names)}
            self.where[mine["ids"]] = mine["slots"]
        on_disk = {p.name for p in self.folder.glob("*" + SUFFIX)}
        missing = sorted(set(self.names) - on_disk)
        if missing:
            raise StateError(
                f"the committed round's device state names {len(missing)} segment(s) that are not in "
                f"{self.folder} (e.g. {missing[0]}); the run cannot continue exactly without them"
            )
        self.known = on_disk | set(self.names)
        self.protected = set(self.known)


def saved_keys(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The index's keys of a saved server state."""
    return {k: v for k, v in state.items() if k.startswith(PREFIX)}
