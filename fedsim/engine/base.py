"""The engine interface: place devices on hosts once, then run rounds on chosen devices."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from fedsim.checkpoint import UpdateScreen
from fedsim.data import DataRecipe, label_counts, partition
from fedsim.data.dataset import Dataset
from fedsim.model.builders import ArtifactRecipe
from fedsim.strategies.base import Partial, Strategy


@dataclass(frozen=True)
class HostSettings:
    """What every host needs to run its devices; fixed for a run."""

    local_epochs: int
    batch_size: int
    seed: int


@dataclass(frozen=True)
class HostReduce:
    """Asks hosts to validate their devices' checkpoints and pre-sum them for a linear strategy."""

    screen: UpdateScreen
    strategy: Strategy


@dataclass(frozen=True)
class DeviceReport:
    """One device's outcome in one round, as the coordinator receives it.

    status: "ok" (trained; `checkpoint` holds its saved weights, or they went into the host's
    partial), "rejected" (its checkpoint failed validation on the host; `error` says why) or
    "failed" (it did not finish; `error` says why).
    """

    device_id: int
    host: int
    samples: int
    status: str = "ok"
    train_loss: float = float("nan")
    train_s: float = float("nan")
    checkpoint: bytes | None = None
    checkpoint_bytes: int = 0
    error: str = ""


@dataclass
class RoundResult:
    """Every selected device's report, plus the hosts' partials when the round was reduced on hosts."""

    reports: list[DeviceReport] = field(default_factory=list)
    partials: list[Partial] = field(default_factory=list)

    def extend(self, other: RoundResult) -> None:
        self.reports.extend(other.reports)
        self.partials.extend(other.partials)


def combine_evaluations(parts: Sequence[tuple[int, np.ndarray]], n: int) -> tuple[float, float]:
    """Hosts' (correct, per-sample losses) over their test slices -> (accuracy, mean loss). fsum is
    exactly rounded, so the result is the same however many hosts split the test set."""
    losses = np.concatenate([p[1] for p in parts])
    return sum(p[0] for p in parts) / n, math.fsum(losses.tolist()) / n


TestBlocks = list[tuple[np.ndarray, np.ndarray]]
EVAL_BLOCK = 500  # test samples per `infer` call; fixed, so results do not depend on the host count


def test_blocks(dataset: Dataset, num_hosts: int) -> list[TestBlocks]:
    """The test set cut into fixed blocks, dealt round-robin to the hosts to spread evaluation."""
    starts = range(0, len(dataset.y_test), EVAL_BLOCK)
    blocks = [(dataset.x_test[i : i + EVAL_BLOCK], dataset.y_test[i : i + EVAL_BLOCK]) for i in starts]
    return [blocks[h::num_hosts] for h in range(num_hosts)]


def assign_hosts(num_devices: int, num_hosts: int) -> list[list[int]]:
    """Device ids per host, round-robin, so any contiguous selection spreads across hosts."""
    return [list(range(h, num_devices, num_hosts)) for h in range(num_hosts)]


@dataclass(frozen=True)
class HostData:
    """One host's training data: its devices' shards back to back, and where each one lies.

    A host keeps its devices' shards as views into these two arrays: on Ray they arrive through the
    object store without a copy, so a host holds its share of the data once and nothing else.
    """

    x: np.ndarray
    y: np.ndarray
    placements: list[tuple[int, int, int]]  # (device_id, start, stop) into x and y


@dataclass(frozen=True)
class Setup:
    """Everything an engine needs to start a run: what to convert, what to load, how to split it."""

    artifact: ArtifactRecipe | bytes  # bytes: a .tflite already made (a resumed run reuses its own)
    data: DataRecipe
    devices: int
    settings: HostSettings
    partition: str = "iid"
    min_samples: int = 1


@dataclass
class Prepared:
    """The outcome of preparing a run: the .tflite, what the data set was, and each host's share."""

    artifact: bytes
    dataset_info: dict[str, int | str]
    hosts: list[HostData]
    tests: list[TestBlocks]
    label_counts: np.ndarray | None = None  # (devices, classes): what each device holds


def prepare(setup: Setup, num_hosts: int) -> Prepared:
    """Load the data, partition it, cut it per host, and convert the model (imports TensorFlow)."""
    dataset = setup.data.load()
    shards = partition(dataset.y_train, setup.devices, setup.partition, setup.settings.seed, setup.min_samples)
    info: dict[str, int | str] = {
        "name": dataset.name,
        "train_samples": len(dataset.y_train),
        "test_samples": len(dataset.y_test),
    }
    artifact = setup.artifact if isinstance(setup.artifact, bytes) else setup.artifact.build()
    counts = label_counts(dataset.y_train, shards).astype(np.int32)
    return Prepared(artifact, info, host_data(dataset, shards, num_hosts), test_blocks(dataset, num_hosts), counts)


def host_data(dataset: Dataset, shards: Sequence[np.ndarray], num_hosts: int) -> list[HostData]:
    out = []
    for ids in assign_hosts(len(shards), num_hosts):
        bounds = np.cumsum([0] + [len(shards[d]) for d in ids])
        order = np.concatenate([shards[d] for d in ids])
        placements = [(d, int(bounds[i]), int(bounds[i + 1])) for i, d in enumerate(ids)]
        out.append(HostData(dataset.x_train[order], dataset.y_train[order], placements))
    return out


class Engine(ABC):
    """Runs everything that needs TensorFlow: conversion, devices, evaluation.

    start() builds the artifact and places devices and test blocks once, then run_round() and
    evaluate() every round. The coordinator process itself never needs to import TensorFlow.
    """

    num_hosts: int

    @abstractmethod
    def start(self, setup: Setup) -> Prepared:
        """Prepare the run (see `prepare`), create the hosts, give each its devices' shards and test
        blocks once, and load the .tflite on every host. The returned Prepared may omit `hosts` and
        `tests` (they live on the hosts)."""

    @abstractmethod
    def initial_checkpoint(self) -> bytes:
        """The weights baked into the artifact, exported through its `save` signature."""

    @abstractmethod
    def evaluate(self, checkpoint: bytes) -> tuple[float, float]:
        """(test accuracy, mean test cross-entropy) of a checkpoint, through the `infer` signature."""

    @abstractmethod
    def run_round(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], reduce: HostReduce | None = None
    ) -> RoundResult:
        """Run one round on the given devices; one report per device, failures included. With
        `reduce`, hosts return partials instead of checkpoints."""

    def host_of(self, device_id: int) -> int:
        return device_id % self.num_hosts

    def split(self, device_ids: Sequence[int]) -> dict[int, list[int]]:
        """Selected device ids per host index (hosts with none left out)."""
        per_host: dict[int, list[int]] = {}
        for d in device_ids:
            per_host.setdefault(self.host_of(d), []).append(d)
        return per_host

    def close(self) -> None:
        """Release hosts and whatever the engine started."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
