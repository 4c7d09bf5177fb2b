"""Device state for hosts that cannot reach the run's state folder (a node of a Ray cluster without
the run folder): the engine reads their devices' state in the folder and hands it over with their
work, and stores the segments they send back. Hosts that can reach the folder read and write it
themselves, and none of this runs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedsim.core.shelf import Shelf
from fedsim.engine.base import StateWritten
from fedsim.pipeline.base import HostRound


def read(state_at: dict[int, str], folder: Path) -> dict[int, dict[str, np.ndarray]]:
    """The state of devices at `state_at` (device -> segment), read from `folder`."""
    shelf = Shelf(folder, -1, cache_bytes=0)
    try:
        return {d: shelf.read(segment, d) for d, segment in state_at.items()}
    finally:
        shelf.close()


def carry(work: HostRound, folder: Path) -> HostRound:
    """A relay host's work with the state its devices kept, read from `folder`."""
    return dataclasses.replace(work, carried=read(work.state_at, folder))


def store(states: Sequence[StateWritten], folder: Path) -> None:
    """The segments a relay host sent back, stored in `folder` (the run's writer syncs them before the
    round that names them commits)."""
    for written in states:
        if written.data is not None:
            tmp = folder / f".{written.segment}.tmp"
            written.data.tofile(tmp)
            os.replace(tmp, folder / written.segment)
