"""The Strategy interface and what flows through aggregation.

Each host runs its devices, passes every upload through the run's pipeline stages (fedsim.pipeline:
verification, attacks, screening, compression, ...) and accumulates the survivors: a running sum for
rules linear in the updates (`accumulate = "sum"`) or the updates' flat vectors (`"stack"`, for order
statistics). The coordinator reduces the hosts' shares into one `Aggregate`, the server-side stages
see it, and the strategy's `apply` turns it, the global weights and the strategy's own state (FedJAX's
server state: momentum, moments) into the next global weights and state. Weights are flat vectors in
the model's layout (fedsim.checkpoint's spec order).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedsim.core.instructions import Instruction
from fedsim.core.settings import Field, Section, fields_of

if TYPE_CHECKING:
    from fedsim.core.context import RunContext

Weights = dict[str, np.ndarray]
State = dict[str, np.ndarray]  # a strategy's server state: named plain arrays (saved with every round)


class KeyedRows(np.ndarray):
    """A state value whose rows are each named by an id that always names the same content (FedBuff's
    model versions in flight): the run folder stores each row once, under its id, instead of every
    row with every round. Held as references to the rows (no copy); reads back as the plain (rows,
    width) array."""

    row_ids: np.ndarray

    @staticmethod
    def of(ids: list[int], rows: list[np.ndarray]) -> KeyedRows:
        out = np.empty(len(rows), object).view(KeyedRows)
        for i, row in enumerate(rows):
            out[i] = row
        out.row_ids = np.asarray(ids, np.int64)
        return out


HONEST = "honest"


@dataclass(frozen=True)
class DevicePlan:
    """What one selected device does this round beyond the run's settings (Flower's configure_fit):
    its role (honest, or the attack it mounts, for the record), a budget of train steps (a straggler's
    partial work), and the instructions strategies and stages gave it, each under its own key
    (fedsim.core.instructions). The host and the device carry them out without knowing any by name."""

    role: str = HONEST
    steps: int | None = None  # a budget of train steps (a straggler's partial work); None: all
    instructions: Mapping[str, Instruction] = field(default_factory=dict)

    def given(self, instruction: Instruction) -> DevicePlan:
        """This plan with `instruction` added under its key (replacing one of the same key)."""
        return dataclasses.replace(self, instructions={**self.instructions, instruction.key: instruction})


@dataclass
class Aggregate:
    """Accepted updates, accumulated: one host's share of a round, or the whole round's (the shares
    reduced). A running sum_i c_i * w_i (float64) with sum_i c_i ("sum"), or the updates' vectors
    themselves ("stack"), each row with its device id, samples, the loss of its first train batch (the
    global model's loss on the device's data) and its budget of train steps (-1: all its batches)."""

    count: int = 0
    total_weight: float = 0.0
    weighted_sum: np.ndarray | None = None  # sum mode: (P,) float64
    rows: np.ndarray | None = None  # stack mode: (n, P) float32, in device-id order once reduced
    device_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    start_losses: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # a secure sum (fedsim.pipeline.secagg): the uploads' integer vectors added modulo `modulus`, which a
    # server stage turns back into weighted_sum before the strategy sees the round
    modular_sum: np.ndarray | None = None
    modulus: int = 0
    # counts the pipeline's stages keep across the round's uploads (e.g. how many were not clipped)
    extras: dict[str, float] = field(default_factory=dict)

    def mean(self) -> np.ndarray:
        """The weighted mean of the updates (float64): sum_i c_i w_i / sum_i c_i."""
        if self.weighted_sum is not None:
            return self.weighted_sum / self.total_weight
        assert self.rows is not None
        c = self.samples.astype(np.float64)
        return (c @ self.rows.astype(np.float64)) / c.sum()


def reduce_partials(partials: Sequence[Aggregate]) -> Aggregate:
    """The hosts' shares -> one Aggregate (sums added in host order; rows sorted by device id, so the
    result does not depend on how devices were dealt to hosts)."""
    live = [p for p in partials if p.count > 0]
    if not live:
        raise ValueError("no partial holds an update")
    count = sum(p.count for p in live)
    total = sum(p.total_weight for p in live)
    extras: dict[str, float] = {}
    for p in live:
        for key, value in p.extras.items():
            extras[key] = extras.get(key, 0.0) + value
    if live[0].modular_sum is not None:  # a secure sum: added modulo its modulus, as the protocol would
        modulus = live[0].modulus
        acc = live[0].modular_sum.copy()
        for p in live[1:]:
            assert p.modular_sum is not None
            acc = (acc + p.modular_sum) % modulus
        return Aggregate(count, total, modular_sum=acc, modulus=modulus, extras=extras)
    if live[0].rows is None:
        first = live[0].weighted_sum
        assert first is not None
        acc = first.copy()
        for p in live[1:]:
            acc += p.weighted_sum
        return Aggregate(count, total, weighted_sum=acc, extras=extras)
    ids = np.concatenate([p.device_ids for p in live])
    order = np.argsort(ids, kind="stable")
    rows = np.concatenate([p.rows for p in live if p.rows is not None])[order]
    return Aggregate(
        count,
        total,
        rows=rows,
        device_ids=ids[order],
        samples=np.concatenate([p.samples for p in live])[order],
        start_losses=np.concatenate([p.start_losses for p in live])[order],
        steps=np.concatenate([p.steps for p in live])[order],
        extras=extras,
    )


@dataclass(frozen=True)
class NoParams(Section):
    """A strategy without hyperparameters."""


class Strategy(ABC):
    """Server state in, server state out: `init` once, then `apply` every round.

    Subclasses set `name`, `Params` (a frozen settings dataclass, fedsim.core.settings.Section, whose fields
    made with `setting(...)` become run flags, TOML keys and sweepable settings of the same name),
    `accumulate` ("sum" or "stack") and the `instructions` its `plan` may give devices (their needs
    decide the artifact variant fedsim builds: FedProx's proximal term, SCAFFOLD's correction).
    """

    name: ClassVar[str] = "strategy"
    Params: ClassVar[type] = NoParams
    accumulate: ClassVar[str] = "sum"
    # capabilities its devices' artifact needs beyond its instructions' (fedsim.model.signatures)
    variant: ClassVar[str | None] = None
    # the instructions its `plan` may give devices (the runtime must honour what they need)
    instructions: ClassVar[tuple[type[Instruction], ...]] = ()
    # weights that stay on the devices unless --personal-layers says otherwise (fedsim.pipeline.personal)
    personal_layers: ClassVar[str | None] = None

    def __init__(self, params: Any = None, **values: Any) -> None:
        if params is not None and values:
            raise TypeError("give params or keyword values, not both")
        self.params = params if params is not None else self.Params(**values)
        # a rule that picks updates (Krum, Multi-Krum, Bulyan) sets the device ids it used in its last
        # apply; devices.parquet's `aggregated` says, per accepted update, whether it was one of them
        self.selected: frozenset[int] | None = None

    @classmethod
    def fields(cls) -> list[Field]:
        """Its hyperparameters as declared settings (name, help, range, default)."""
        return fields_of(cls.Params, owner=cls.name)

    @classmethod
    def param_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Params)]

    def check_cohort(self, devices: int, per_round: int, byzantine: float) -> None:  # noqa: B027 - optional
        """ConfigError, before any work, if the strategy's settings cannot hold for rounds of
        `per_round` devices of `devices` (rather than being lowered silently at run time)."""

    def bind(self, run: RunContext) -> Strategy:
        """This strategy with hyperparameters left to the run filled in from it (Krum's f, q-FedAvg's
        L, SCAFFOLD's step counts); itself when there are none."""
        return self

    def weights(self, samples: np.ndarray) -> np.ndarray:
        """c_i of devices holding `samples` samples each, in the weighted sums and means (FedAvg's n_i)."""
        return np.asarray(samples, np.float64)

    def init(self, weights: np.ndarray) -> State:
        """The strategy's state before round 1 (empty for a stateless rule)."""
        return {}

    def resume_state(self, saved: State, weights: np.ndarray) -> State:
        """A state saved by a committed round (an earlier version's layout upgraded), checked against
        what this strategy keeps; ValueError if it cannot continue this run."""
        fresh = self.init(weights)
        if {k: np.shape(v) for k, v in saved.items()} != {k: np.shape(v) for k, v in fresh.items()}:
            raise ValueError(
                f"the saved server state holds {sorted(saved) or 'nothing'}, but {self.name} keeps "
                f"{sorted(fresh) or 'nothing'} of the model's size; it cannot continue this run"
            )
        return saved

    def plan(self, round_num: int, device_ids: Sequence[int], state: State) -> dict[int, DevicePlan]:
        """Per-device instructions for this round's selected devices (those left out: the defaults)."""
        return {}

    @abstractmethod
    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        """(next global weights, next state) from the current global weights (flat float32), the
        round's aggregate (at least one accepted update) and the current state."""

    def device_work(self, local_epochs: int) -> tuple[int, int]:
        """(epochs a device trains a round, restore-and-save pairs it runs) on its phone: the simulated
        clock's compute. Most strategies: the local epochs, once; Ditto trains a personal model too."""
        return local_epochs, 1

    def personaliser(self) -> Instruction | None:
        """What makes a device's personal model from its state (Ditto's v), for personalised
        evaluation; None: the strategy keeps none."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self.params)}
