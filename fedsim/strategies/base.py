"""The Strategy interface and what flows through the aggregation pipeline.

The pipeline (after pfl-research's aggregator/postprocessor split): each host runs its devices,
passes every update through the run's postprocessors (attack, screening, clipping) and accumulates
the survivors, either as a running sum (`accumulate = "sum"`, for rules linear in the updates) or as
the updates' flat vectors (`"stack"`, for order statistics). The coordinator reduces the hosts'
partials into one `Aggregate` and the strategy's `apply` turns it, the global weights and the
strategy's own state (FedJAX's server state: momentum, moments) into the next global weights and
state. Weights are flat vectors in the model's layout (fedsim.checkpoint's spec order).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

Weights = dict[str, np.ndarray]
State = dict[str, np.ndarray]  # a strategy's server state: named plain arrays (saved with every round)

HONEST = "honest"


@dataclass(frozen=True)
class DevicePlan:
    """What one selected device does this round beyond the run's settings (Flower's configure_fit):
    its role (honest, or the attack it mounts), FedProx's proximal weight mu, SCAFFOLD's correction
    c - c_i (float32 bytes, weights in the model's flat order) that its `train` adds, and a budget
    of train steps."""

    role: str = HONEST
    mu: float = 0.0
    control: bytes | None = None
    steps: int | None = None  # a budget of train steps (a straggler's partial work); None: all


@dataclass
class Partial:
    """One host's share of a round: a running sum_i c_i * w_i (float64) with sum_i c_i ("sum"), or the
    accepted updates' vectors themselves ("stack"), each with its device id, samples and the loss of
    its first train batch (the global model's loss on the device's data)."""

    count: int = 0
    total_weight: float = 0.0
    weighted_sum: np.ndarray | None = None  # (P,) float64
    rows: np.ndarray | None = None  # (n, P) float32
    device_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    start_losses: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))


@dataclass
class Aggregate:
    """The round's accepted updates as the strategy sees them (the hosts' partials reduced)."""

    count: int
    total_weight: float
    weighted_sum: np.ndarray | None = None  # sum mode: (P,) float64
    rows: np.ndarray | None = None  # stack mode: (n, P) float32, in device-id order
    device_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    start_losses: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    # stack mode: each row's budget of train steps where the round cut it (a straggler's partial work
    # by the deadline), -1 where the device ran all its steps; empty: every device ran all of them
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def mean(self) -> np.ndarray:
        """The weighted mean of the updates (float64): sum_i c_i w_i / sum_i c_i."""
        if self.weighted_sum is not None:
            return self.weighted_sum / self.total_weight
        assert self.rows is not None
        c = self.samples.astype(np.float64)
        return (c @ self.rows.astype(np.float64)) / c.sum()


def reduce_partials(partials: Sequence[Partial]) -> Aggregate:
    """The hosts' partials -> one Aggregate (sums added in host order; rows sorted by device id, so
    the result does not depend on how devices were dealt to hosts)."""
    live = [p for p in partials if p.count > 0]
    if not live:
        raise ValueError("no partial holds an update")
    count = sum(p.count for p in live)
    total = sum(p.total_weight for p in live)
    if live[0].rows is None:
        acc = live[0].weighted_sum.copy()
        for p in live[1:]:
            acc += p.weighted_sum
        return Aggregate(count, total, weighted_sum=acc)
    ids = np.concatenate([p.device_ids for p in live])
    order = np.argsort(ids, kind="stable")
    rows = np.concatenate([p.rows for p in live])[order] if len(live) > 1 else live[0].rows[order]
    return Aggregate(
        count,
        total,
        rows=rows,
        device_ids=ids[order],
        samples=np.concatenate([p.samples for p in live])[order],
        start_losses=np.concatenate([p.start_losses for p in live])[order],
    )


@dataclass(frozen=True)
class NoParams:
    """A strategy without hyperparameters."""


def check_param(ok: bool, name: str, what: str, value: Any) -> None:
    """One-line error naming the flag: "--beta1 must be in [0, 1), got 1.5"."""
    if not ok:
        raise ValueError(f"--{name.replace('_', '-')} {what}, got {value!r}")


def in_unit(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


def positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)


class Strategy(ABC):
    """Server state in, server state out: `init` once, then `apply` every round.

    Subclasses set `name`, `Params` (a frozen dataclass of hyperparameters, each settable as a
    run flag of the same name), `accumulate` ("sum" or "stack") and, when the devices' `train`
    must change (FedProx), `variant`.
    """

    name: ClassVar[str] = "strategy"
    Params: ClassVar[type] = NoParams
    accumulate: ClassVar[str] = "sum"
    variant: ClassVar[str | None] = None  # the artifact variant its devices run (see fedsim.model.module)

    def __init__(self, params: Any = None, **values: Any) -> None:
        if params is not None and values:
            raise TypeError("give params or keyword values, not both")
        self.params = params if params is not None else self.Params(**values)

    @classmethod
    def param_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Params)]

    def bind(self, config: Any) -> Strategy:
        """This strategy with hyperparameters left to the run filled in from its config (Krum's f,
        q-FedAvg's L); itself when there are none."""
        return self

    def weight(self, samples: int) -> float:
        """c_i of a device with `samples` samples in the weighted sums and means (FedAvg's n_i)."""
        return float(samples)

    def init(self, weights: np.ndarray) -> State:
        """The strategy's state before round 1 (empty for a stateless rule)."""
        return {}

    def plan(self, round_num: int, device_ids: Sequence[int], state: State) -> dict[int, DevicePlan]:
        """Per-device instructions for this round's selected devices (those left out: the defaults)."""
        return {}

    @abstractmethod
    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        """(next global weights, next state) from the current global weights (flat float32), the
        round's aggregate (at least one accepted update) and the current state."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.params)}
