"""The engine interface: what the coordinator asks of whatever runs the devices (fedsim.engine.local
in-process, fedsim.engine.ray on Ray actors), and what it gets back."""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np

from fedsim.core.instructions import Instruction
from fedsim.engine.schedule import deal, expected_costs
from fedsim.engine.settings import HostSettings
from fedsim.strategies.base import Aggregate

if TYPE_CHECKING:
    from fedsim.engine.layout import Prepared, Setup
    from fedsim.pipeline.base import HostRound


class EngineError(RuntimeError):
    """The engine could not start the run (e.g. its preparation ran out of memory); one line says why."""


@dataclass(frozen=True)
class DeviceReport:
    """One device's outcome in one round, as the coordinator receives it.

    status: "ok" (trained; its update went into the host's partial), "rejected" (its checkpoint
    failed validation on the host; `error` says why) or "failed" (it did not finish; `error` says why).
    """

    device_id: int
    host: int
    samples: int
    status: str = "ok"
    train_loss: float = float("nan")
    train_s: float = float("nan")
    checkpoint_bytes: int = 0
    error: str = ""
    metrics: dict[str, float] = field(default_factory=dict)  # what the pipeline's stages recorded (devices.parquet)


@dataclass(frozen=True)
class StateWritten:
    """A segment of device state a host wrote in one call (fedsim.core.segments): its file name, the
    devices whose state it holds, and (from a host that cannot write the run's state folder) its
    bytes, which the engine stores there."""

    segment: str
    device_ids: tuple[int, ...]
    data: np.ndarray | None = None


@dataclass
class RoundResult:
    """Every selected device's report, the hosts' partials of the accepted updates, and the device
    state the hosts wrote."""

    reports: list[DeviceReport] = field(default_factory=list)
    partials: list[Aggregate] = field(default_factory=list)
    states: list[StateWritten] = field(default_factory=list)
    # seconds each upload stage spent on the hosts, by stage name, summed over the devices
    stage_s: dict[str, float] = field(default_factory=dict)

    def extend(self, other: RoundResult) -> None:
        self.reports.extend(other.reports)
        self.partials.extend(other.partials)
        self.states.extend(other.states)
        for name, seconds in other.stage_s.items():
            self.stage_s[name] = self.stage_s.get(name, 0.0) + seconds


@dataclass(frozen=True)
class Evaluation:
    """The global model on the test set, and on the selected devices' own test splits (if any)."""

    accuracy: float
    loss: float
    device_accuracy: dict[int, float] = field(default_factory=dict)
    top3_accuracy: float = float("nan")  # the label among the model's 3 likeliest (a keyboard's suggestions)
    device_loss: dict[int, float] = field(default_factory=dict)  # mean cross-entropy on each device's split


@dataclass(frozen=True)
class PersonalEval:
    """Personalised evaluation of one round's model: each of `device_ids` scores, on its own test split,
    the global model as received and its personal model (what `maker` makes of its state: its personal
    layers merged in, Ditto's v; None: the global model) after `epochs` epochs of fine-tuning on its
    own training data, which are then discarded. `state_at`: where each device's state is (a relay
    host is handed it: `carried`); `spec`: the global checkpoint's layout."""

    device_ids: tuple[int, ...]
    epochs: int
    maker: Instruction | None
    round_num: int
    spec: dict[str, tuple[tuple[int, ...], str]]
    state_at: dict[int, str] = field(default_factory=dict)
    carried: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def only(self, device_ids: Sequence[int]) -> PersonalEval:
        """This evaluation cut to one host's devices."""
        mine = set(device_ids)
        return dataclasses.replace(
            self,
            device_ids=tuple(d for d in self.device_ids if d in mine),
            state_at={d: s for d, s in self.state_at.items() if d in mine},
            carried={d: s for d, s in self.carried.items() if d in mine},
        )


def combine_evaluations(
    parts: Sequence[tuple[np.ndarray, np.ndarray, dict[int, tuple[float, float]]]], n: int
) -> Evaluation:
    """Hosts' ([top-1, top-3 correct, targets scored], per-sample losses, device (accuracy, loss)) ->
    Evaluation. fsum is exactly rounded, so the mean loss is the same however many hosts split the
    test set; accuracy is over the scored targets (all, unless the task leaves some unscored)."""
    losses = np.concatenate([p[1] for p in parts])
    top1, top3, scored = np.sum([np.asarray(p[0], np.int64) for p in parts], axis=0).tolist()
    devices = {d: a for p in parts for d, a in p[2].items()}
    nan = float("nan")
    return Evaluation(
        top1 / scored if scored else nan,
        math.fsum(losses.tolist()) / n,
        {d: a for d, (a, _) in devices.items()},
        top3 / scored if scored else nan,
        {d: lost for d, (_, lost) in devices.items()},
    )


class Engine(ABC):
    """Runs everything that needs TensorFlow: conversion, devices, evaluation.

    start() builds the artifact and shares the fleet's data and test blocks with the hosts once, then
    run_round() and evaluate() every round; any host can run any device, and `split` deals each
    round's devices by expected cost. The coordinator process itself never needs to import TensorFlow.
    """

    num_hosts: int
    costs: np.ndarray | None = None  # expected seconds of each device's round (expected_costs)

    @abstractmethod
    def start(self, setup: Setup) -> Prepared:
        """Prepare the run (see `prepare`), create the hosts, give each the fleet's data and its test
        blocks once, and load the .tflite on every host. The returned Prepared may omit `fleet` and
        `tests` (they live on the hosts)."""

    @abstractmethod
    def initial_checkpoint(self) -> bytes:
        """The weights baked into the artifact, exported through its `save` signature."""

    @abstractmethod
    def evaluate(self, checkpoint: bytes, device_ids: Sequence[int] = ()) -> Evaluation:
        """Test accuracy and mean cross-entropy of a checkpoint through the `infer` signature, and
        its accuracy on each of `device_ids`' own test split."""

    def evaluate_personal(self, checkpoint: bytes, personal: PersonalEval) -> dict[int, tuple[float, float]]:
        """device id -> (its global accuracy, its personal accuracy) on its own test split (see
        PersonalEval); devices without a test split of their own are left out."""
        raise NotImplementedError(f"{type(self).__name__} cannot evaluate personal models")

    @abstractmethod
    def run_round(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], work: HostRound
    ) -> RoundResult:
        """Run one round on the given devices: one report per device, failures included, and one
        partial per host that accepted an update (`work`: the devices' plans and the upload stages)."""

    def submit(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], work: HostRound
    ) -> Callable[[], RoundResult]:
        """Hand a round's devices to the hosts and return a call that waits for their result, so the
        caller can go on meanwhile (FedBuff's loop). Engines that cannot queue work run it here."""
        result = self.run_round(round_num, global_checkpoint, device_ids, work)
        return lambda: result

    def use_state_folder(self, folder: Path) -> None:  # noqa: B027 - engines without hosts need nothing
        """Where the hosts read and write what devices keep across rounds (fedsim.core.segments): the run
        folder's `device_state/`, or a scratch folder for a run that records nothing."""

    def set_costs(self, prepared: Prepared, settings: HostSettings) -> None:
        """Expected device costs from the partition and the artifact report's measured latencies."""
        if prepared.label_counts is not None:
            latency = (prepared.report or {}).get("latency_ms")
            self.costs = expected_costs(prepared.label_counts.sum(axis=1), settings, latency)

    def split(self, device_ids: Sequence[int]) -> dict[int, list[int]]:
        """A round's device ids per host index, dealt by expected cost (hosts with none left out)."""
        return deal(device_ids, self.costs, self.num_hosts)

    def close(self) -> None:  # noqa: B027 - an engine with nothing to release need not override it
        """Release hosts and whatever the engine started."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
