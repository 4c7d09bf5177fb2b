"""The settings of where the hosts run: how many, on which Ray cluster, and how long a round may wait."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.core.settings import Section, setting


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


@dataclass(frozen=True)
class HostSettings:
    """What every host needs to run its devices; fixed for a run."""

    local_epochs: int
    batch_size: int
    seed: int
