"""The settings of where the hosts run: how many, on which Ray cluster, and how long a round may wait."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.core.settings import Section, setting
from fedsim.core.shelf import CACHE_BYTES


@dataclass(frozen=True)
class EngineSettings(Section):
    section = "engine"
    # None = one per CPU Ray sees (never more than devices)
    hosts: int | None = setting(None, "Ray actors hosting devices (default: one per CPU)", least=1, resumable=True)
    # None = start a local Ray for the run
    address: str | None = setting(None, "join an existing Ray cluster (e.g. auto or 10.0.0.1:6379)", resumable=True)
    # None = wait as long as it takes
    round_timeout: float | None = setting(
        None, "seconds before a silent host is restarted and its devices marked failed", above=0
    )
    state_cache_mb: float = setting(
        CACHE_BYTES / 2**20,
        "MB of the device state a host wrote last that it keeps in memory to read next round instead of "
        "the disk (0: read every state from the disk; flat memory, slower rounds for small states)",
        least=0,
        resumable=True,
    )


@dataclass(frozen=True)
class HostSettings:
    """What every host needs to run its devices; fixed for a run."""

    local_epochs: int
    batch_size: int
    seed: int
    state_cache_mb: float = CACHE_BYTES / 2**20  # (--state-cache-mb)

    @property
    def state_cache_bytes(self) -> int:
        return int(self.state_cache_mb * 2**20)
