"""The settings of the simulated clock (--fleet and the round policies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsim.core.settings import ConfigError, Section, flag, setting

if TYPE_CHECKING:
    from fedsim.clock.clock import Clock

STRAGGLER_POLICIES = ("drop", "partial")


@dataclass(frozen=True)
class ClockSettings(Section):
    section = "clock"
    fleet: str | None = setting(
        None,
        "device profiles for the simulated clock: phones, skewed, uniform, FILE.csv or "
        "fedscale:CAPACITY[,BEHAVIOUR] (default: no simulated clock)",
    )
    latency: str | None = setting(
        None, "pin the simulated compute to a latency table (JSON restore/train/save ms, or an artifact.json)"
    )
    deadline: float | None = setting(None, "simulated seconds a round may last (needs --fleet)", above=0)
    straggler: str = setting(
        "drop",
        "what a straggler's work becomes: drop (discard) or partial (keep the steps done by the deadline)",
        choices=STRAGGLER_POLICIES,
    )
    over_select: float = setting(
        1.0,
        "select this many times the devices kept; the first to finish are kept",
        least=1,
        why="(it picks that many times the devices a round keeps)",
    )

    def clock(self, profiles: Any, latency: dict[str, float], batch_size: int, local_epochs: int, seed: int) -> Clock:
        """The simulated clock of these settings over `profiles` and a latency table."""
        from fedsim.clock.clock import Clock

        return Clock(profiles, latency, batch_size, local_epochs, seed, self.deadline, self.straggler, self.over_select)

    def check(self) -> None:
        from fedsim.clock.clock import read_latency
        from fedsim.clock.profiles import check_spec

        if self.fleet is not None:
            check_spec(self.fleet)
        for name, on in (
            ("deadline", self.deadline is not None),
            ("latency", self.latency is not None),
            ("over_select", self.over_select != 1),
            ("straggler", self.straggler != "drop"),
        ):
            if on and self.fleet is None:
                raise ConfigError(f"{flag(name)} needs --fleet (the device profiles of the simulated clock)")
        if self.straggler == "partial" and self.deadline is None:
            raise ConfigError("--straggler partial needs --deadline (the time by which work is cut)")
        if self.latency is not None:
            read_latency(self.latency)
