"""How rounds are scheduled: synchronous rounds (the default), or asynchronous buffered aggregation
(--mode async, FedBuff: Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous
Aggregation") on the simulated clock; the settings and the staleness weights."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedsim.clock.settings import ClockSettings
from fedsim.core.settings import ConfigError, Section, setting

if TYPE_CHECKING:
    from fedsim.pipeline import Pipeline
    from fedsim.strategies.base import Strategy

MODES = ("sync", "async")


def parse_staleness(text: str) -> tuple[str, float, float]:
    """(kind, a, b) of --staleness: poly:A, constant or hinge:A,B; ConfigError otherwise."""
    kind, _, arg = text.partition(":")
    try:
        if kind == "constant" and not arg:
            return "constant", 0.0, 0.0
        if kind == "poly":
            a = float(arg)
            if a >= 0 and math.isfinite(a):
                return "poly", a, 0.0
        if kind == "hinge":
            a, b = (float(v) for v in arg.split(","))
            if a >= 0 and b >= 0 and math.isfinite(a + b):
                return "hinge", a, b
    except ValueError:
        pass
    raise ConfigError(f"--staleness must be poly:A, constant or hinge:A,B (A, B >= 0), got {text!r}")


def staleness_weight(text: str, staleness: int) -> float:
    """The weight of an update `staleness` server steps old: poly:A 1 / (1 + s)^A (FedBuff's A = 0.5);
    constant 1; hinge:A,B 1 up to B, then 1 / (A (s - B) + 1) (FedAsync, Xie et al. 2019)."""
    kind, a, b = parse_staleness(text)
    if kind == "poly":
        return 1.0 / (1.0 + staleness) ** a
    if kind == "hinge" and staleness > b:
        return 1.0 / (a * (staleness - b) + 1.0)
    return 1.0


@dataclass(frozen=True)
class ScheduleSettings(Section):
    section = "schedule"
    mode: str = setting(
        "sync",
        "sync: rounds wait for their cohort; async: FedBuff's buffered asynchronous "
        "aggregation on the simulated clock (needs --fleet)",
        choices=MODES,
    )
    concurrency: int | None = setting(
        None, "async: devices training at once on the simulated clock (default: the per-round cohort)", least=1
    )
    buffer: int | None = setting(
        None, "async: the server steps every this many arrived updates (default: the per-round cohort)", least=1
    )
    staleness: str = setting(
        "poly:0.5", "async: an update's weight by its staleness s: poly:A 1/(1+s)^A, constant, or hinge:A,B"
    )
    max_staleness: int | None = setting(None, "async: updates staler than this many server steps are dropped", least=0)

    def check_with(self, clock: ClockSettings, sampling: str) -> None:
        """Rules across sections: async needs the simulated clock, and has no rounds to shape."""
        if self.mode != "async":
            return
        if clock.fleet is None:
            raise ConfigError("--mode async needs --fleet: its events are ordered on the simulated clock")
        for name, on, why in (
            ("--deadline", clock.deadline is not None, "an asynchronous server waits for no round"),
            ("--over-select", clock.over_select != 1, "--concurrency sets how many devices train at once"),
            ("--sampling poisson", sampling == "poisson", "devices start as slots free up"),
        ):
            if on:
                raise ConfigError(f"{name} does not apply to --mode async ({why})")

    def check(self) -> None:
        parse_staleness(self.staleness)
        if self.mode == "sync":
            for name in ("concurrency", "buffer", "max_staleness"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"--{name.replace('_', '-')} applies to --mode async")


def check(strategy: Strategy, pipeline: Pipeline) -> None:
    """ConfigError, in one line, for what --mode async cannot run."""
    for stage in pipeline.stages:
        if stage.asynchronous is not True:
            raise ConfigError(f"--mode async cannot run the {stage.name} stage: {stage.asynchronous}")
    if pipeline.accumulate(strategy) != "sum":
        raise ConfigError(
            f"--mode async applies rules that sum the updates; strategy {strategy.name} (or an attack that "
            "reads the honest updates) needs a round's updates side by side"
        )
