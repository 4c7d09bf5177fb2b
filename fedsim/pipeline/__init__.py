"""The update pipeline (see fedsim.pipeline.base): the stages of a run, in order, built from its
settings. STAGES lists every stage fedsim knows; each declares its own settings section, so its
settings are run flags, TOML keys and sweepable settings by that declaration alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.core.instructions import Instruction
from fedsim.core.settings import ConfigError
from fedsim.pipeline.attack import Attack
from fedsim.pipeline.base import HostRound, Rejected, ServerContext, SimCost, Stage, StopRun, Upload, UploadContext
from fedsim.pipeline.compress import Compress
from fedsim.pipeline.dp import DP
from fedsim.pipeline.ldp import LDP
from fedsim.pipeline.personal import Personal
from fedsim.pipeline.screen import Screen
from fedsim.pipeline.secagg import SecAgg
from fedsim.pipeline.verify import Verify
from fedsim.strategies.base import Aggregate, DevicePlan, State

if TYPE_CHECKING:
    from fedsim.core.context import RunContext
    from fedsim.strategies.base import Strategy

# Every stage fedsim knows. Their order is what they declare (`after`), not this tuple's: an upload meets
# the server's checks of what it received, an attacker's rewrite on its device, the personal weights it
# keeps (partial sharing), the device's DP
# clipping, its local DP noise, its encoding for the uplink, the secure sum's quantisation, the
# server's screening of each update. The server's steps on the round's reduced updates run in the
# reverse order (the last encoding is undone first: the secure sum is dequantised before the central
# DP noise is added to it).
REGISTERED: tuple[type[Stage], ...] = (Verify, Attack, Personal, DP, LDP, Compress, SecAgg, Screen)


def in_order(stages: Sequence[type[Stage]]) -> tuple[type[Stage], ...]:
    """The stages sorted so that each comes after those it names in `after` (ties by name, so the
    order does not depend on how they are listed); ValueError for a name no stage has, or a cycle."""
    by_name = {s.name: s for s in stages}
    for s in stages:
        unknown = [n for n in s.after if n not in by_name]
        if unknown:
            raise ValueError(f"stage {s.name} comes after {', '.join(unknown)}, which no registered stage is")
    done: list[type[Stage]] = []
    left = sorted(stages, key=lambda s: s.name)
    while left:
        ready = [s for s in left if all(n in {d.name for d in done} for n in s.after)]
        if not ready:
            raise ValueError(f"stages {', '.join(s.name for s in left)} order each other in a circle")
        done.append(ready[0])
        left.remove(ready[0])
    return tuple(done)


STAGES = in_order(REGISTERED)
PREFIX = "pipeline."  # the stages' keys in a saved server state

__all__ = [
    "REGISTERED",
    "STAGES",
    "HostRound",
    "Pipeline",
    "Rejected",
    "ServerContext",
    "SimCost",
    "Stage",
    "StopRun",
    "Upload",
    "UploadContext",
    "plain_round",
]


def plain_round(checkpoint: bytes, round_num: int = 1, accumulate: str = "sum") -> HostRound:
    """A round that only checks each upload against the model `checkpoint` holds and sums it weighted
    by its samples (FedAvg's): for driving an engine by hand."""
    from fedsim.checkpoint import read_checkpoint, spec_of

    return HostRound(round_num, spec_of(read_checkpoint(checkpoint)), (Verify(),), accumulate)


def host_seconds(stage: str) -> str:
    """The rounds table's column of a stage's seconds on the hosts."""
    return f"{stage}_host_s"


class Pipeline:
    """The run's stages in order, and the few questions the round loop asks of all of them at once."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)

    @classmethod
    def build(cls, sections: Mapping[str, Any], seed: int = 0, strategy: Strategy | None = None) -> Pipeline:
        """The stages that `sections` (each stage's settings, by section name) and the strategy turn on."""
        made = (s.make_for(sections[s.Settings.section], seed, strategy) for s in STAGES)
        return cls([stage for stage in made if stage is not None])

    def check(self, strategy: Strategy) -> None:
        """ConfigError if a stage cannot run with `strategy`, or with another stage."""
        for stage in self.stages:
            stage.check(strategy)
        names = set(self.names())
        for stage in self.stages:
            for other, why in stage.conflicts.items():
                if other in names:
                    raise ConfigError(why)

    def check_fleet(self, devices: int) -> None:
        for stage in self.stages:
            stage.check_fleet(devices)

    def bind(self, run: RunContext) -> None:
        for stage in self.stages:
            stage.bind(run)

    def accumulate(self, strategy: Strategy) -> str:
        """How hosts accumulate: every update's vector when the strategy or a stage needs them, a
        modular sum when a stage sums securely, else a running sum."""
        wanted = {s.accumulate for s in self.stages if s.accumulate} | {strategy.accumulate}
        if "modular" in wanted:
            if wanted - {"modular", "sum"}:
                raise ConfigError(
                    "secure aggregation sums the updates; it cannot run with what needs each update on the "
                    f"server (strategy {strategy.name}, or an ALIE attack)"
                )
            return "modular"
        if "stack" in wanted:
            return "stack"
        if strategy.accumulate != "sum":
            raise ConfigError(f"strategy {strategy.name} accumulates {strategy.accumulate!r}; use sum or stack")
        return "sum"

    def modulus(self) -> int:
        return max((s.modulus for s in self.stages), default=0)

    def before_round(self, round_num: int) -> None:
        for stage in self.stages:
            stage.before_round(round_num)

    def plan(self, round_num: int, device_ids: Sequence[int], plans: dict[int, DevicePlan]) -> None:
        for stage in self.stages:
            stage.plan(round_num, device_ids, plans)

    def coefficients(self, coefficients: np.ndarray) -> np.ndarray:
        for stage in self.stages:
            coefficients = stage.coefficients(coefficients)
        return coefficients

    def host_stages(self) -> tuple[Stage, ...]:
        """The stages hosts run on every upload, as this round needs them (light copies)."""
        return tuple(s.for_host() for s in self.stages if s.on_host)

    def server(self, aggregate: Aggregate, ctx: ServerContext) -> Aggregate | None:
        """The round's updates through every server step; None when a stage lost them."""
        out: Aggregate | None = aggregate
        for stage in reversed(self.stages):
            if out is None:
                return None
            out = stage.server(out, ctx)
        return out

    def sim_cost(self, cohort: int, params: int) -> SimCost:
        total = SimCost()
        for stage in self.stages:
            total = total + stage.sim_cost(cohort, params)
        return total

    def server_seconds(self) -> float:
        return sum(s.server_seconds() for s in self.stages)

    def settle(self, flat: np.ndarray, before: np.ndarray) -> np.ndarray:
        for stage in self.stages:
            flat = stage.settle(flat, before)
        return flat

    def personaliser(self) -> Instruction | None:
        """The first stage's that makes personal models (partial sharing's), if any."""
        return next((p for s in self.stages if (p := s.personaliser()) is not None), None)

    def seed_states(self) -> dict[int, dict[str, np.ndarray]]:
        """What devices keep that a stage held itself until now (a run folder of an earlier fedsim)."""
        out: dict[int, dict[str, np.ndarray]] = {}
        for stage in self.stages:
            for d, values in stage.seed_states().items():
                out.setdefault(d, {}).update(values)
        return out

    def broadcast(self, flat: np.ndarray) -> np.ndarray:
        """The model the devices receive: the server's, unless a stage encodes the downlink."""
        for stage in self.stages:
            flat = stage.broadcast(flat)
        return flat

    def download_bytes(self, nbytes: int, params: int) -> int:
        for stage in self.stages:
            nbytes = stage.download_bytes(nbytes, params)
        return nbytes

    def describe(self) -> dict[str, Any]:
        return {s.name: d for s in self.stages if (d := s.describe())}

    def device_columns(self) -> list[str]:
        return [c for s in self.stages for c in s.device_table_columns()]

    def upload_bytes(self, nbytes: int, params: int) -> int:
        """What each device sends, after every stage's encoding."""
        for stage in self.stages:
            nbytes = stage.upload_bytes(nbytes, params)
        return nbytes

    def columns(self) -> list[str]:
        """The columns the stages add to the rounds table: their own, and each host stage's seconds on
        the hosts (`<name>_host_s`: summed over the round's devices; a synchronous round's)."""
        return [c for s in self.stages for c in s.columns] + [host_seconds(name) for name in self._timed()]

    def host_columns(self, stage_s: Mapping[str, float]) -> dict[str, float]:
        """The round's `<stage>_host_s` columns from the hosts' seconds per stage."""
        timed = self._timed()
        return {host_seconds(name): seconds for name, seconds in stage_s.items() if name in timed}

    def _timed(self) -> list[str]:
        """The stages whose seconds on the hosts the rounds table records."""
        return [s.name for s in self.stages if s.on_host and s.timed]

    def round_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage in self.stages:
            out.update(stage.round_metrics())
        return out

    def state(self) -> State:
        """Every stage's state, its keys prefixed "pipeline.<stage>." (beside the strategy's own keys)."""
        return {f"{PREFIX}{s.name}.{k}": v for s in self.stages for k, v in s.state().items()}

    def restore(self, state: State) -> None:
        for s in self.stages:
            prefix = f"{PREFIX}{s.name}."
            mine = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if mine:
                s.restore(mine)

    def names(self) -> list[str]:
        return [s.name for s in self.stages]
