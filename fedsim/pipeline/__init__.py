"""The update pipeline (see fedsim.pipeline.base): the stages of a run, in order, built from its
settings. STAGES lists every stage fedsim knows; each declares its own settings section, so its
settings are run flags, TOML keys and sweepable settings by that declaration alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.pipeline.attack import Attack
from fedsim.pipeline.base import HostRound, Rejected, ServerContext, Stage, Upload, UploadContext
from fedsim.pipeline.compress import Compress
from fedsim.pipeline.screen import Screen
from fedsim.pipeline.verify import Verify
from fedsim.settings import ConfigError
from fedsim.strategies.base import Aggregate, DevicePlan, State

if TYPE_CHECKING:
    from fedsim.context import RunContext
    from fedsim.strategies.base import Strategy

# In the order an upload meets them: the server's checks of what it received, an attacker's rewrite on
# its device, the device's encoding for the uplink, the server's screening of each update.
STAGES: tuple[type[Stage], ...] = (Verify, Attack, Compress, Screen)
PREFIX = "pipeline."  # the stages' keys in a saved server state

__all__ = [
    "STAGES",
    "HostRound",
    "Pipeline",
    "Rejected",
    "ServerContext",
    "Stage",
    "Upload",
    "UploadContext",
    "plain_round",
]


def plain_round(checkpoint: bytes, round_num: int = 1, accumulate: str = "sum") -> HostRound:
    """A round that only checks each upload against the model `checkpoint` holds and sums it weighted
    by its samples (FedAvg's): for driving an engine by hand."""
    from fedsim.checkpoint import read_checkpoint, spec_of

    return HostRound(round_num, spec_of(read_checkpoint(checkpoint)), (Verify(),), accumulate)


class Pipeline:
    """The run's stages in order, and the few questions the round loop asks of all of them at once."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        self._host: tuple[Stage, ...] | None = None

    @classmethod
    def build(cls, sections: Mapping[str, Any], seed: int = 0) -> Pipeline:
        """The stages that `sections` (each stage's settings, by section name) turn on."""
        made = (s.make(sections[s.Settings.section], seed) for s in STAGES)
        return cls([stage for stage in made if stage is not None])

    def check(self, strategy: Strategy) -> None:
        """ConfigError if a stage cannot run with `strategy`."""
        for stage in self.stages:
            stage.check(strategy)

    def bind(self, run: RunContext) -> None:
        for stage in self.stages:
            stage.bind(run)
        self._host = tuple(s.for_host() for s in self.stages if s.on_host)

    def accumulate(self, strategy: Strategy) -> str:
        """How hosts accumulate: every update's vector when the strategy or a stage needs them."""
        if strategy.accumulate == "stack" or any(s.accumulate == "stack" for s in self.stages):
            return "stack"
        if strategy.accumulate != "sum":
            raise ConfigError(f"strategy {strategy.name} accumulates {strategy.accumulate!r}; use sum or stack")
        return "sum"

    def plan(self, round_num: int, device_ids: Sequence[int], plans: dict[int, DevicePlan]) -> None:
        for stage in self.stages:
            stage.plan(round_num, device_ids, plans)

    def coefficients(self, coefficients: np.ndarray) -> np.ndarray:
        for stage in self.stages:
            coefficients = stage.coefficients(coefficients)
        return coefficients

    def host_stages(self) -> tuple[Stage, ...]:
        """The stages hosts run on every upload (light copies)."""
        if self._host is None:
            self._host = tuple(s.for_host() for s in self.stages if s.on_host)
        return self._host

    def server(self, aggregate: Aggregate, ctx: ServerContext) -> Aggregate:
        for stage in self.stages:
            aggregate = stage.server(aggregate, ctx)
        return aggregate

    def upload_bytes(self, nbytes: int, params: int) -> int:
        """What each device sends, after every stage's encoding."""
        for stage in self.stages:
            nbytes = stage.upload_bytes(nbytes, params)
        return nbytes

    def columns(self) -> list[str]:
        """The columns the stages add to the rounds table."""
        return [c for s in self.stages for c in s.columns]

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
