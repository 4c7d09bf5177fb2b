"""The engine interface: place devices on hosts once, then run rounds on chosen devices."""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from fedsim.checkpoint import UpdateScreen
from fedsim.data import DataRecipe, label_counts, partition
from fedsim.data.dataset import DataError, Dataset
from fedsim.data.partition import group_indices
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


@dataclass(frozen=True)
class Evaluation:
    """The global model on the test set, and on the selected devices' own test splits (if any)."""

    accuracy: float
    loss: float
    device_accuracy: dict[int, float] = field(default_factory=dict)


def combine_evaluations(parts: Sequence[tuple[int, np.ndarray, dict[int, float]]], n: int) -> Evaluation:
    """Hosts' (correct, per-sample losses, device accuracies) -> Evaluation. fsum is exactly
    rounded, so the mean loss is the same however many hosts split the test set."""
    losses = np.concatenate([p[1] for p in parts])
    devices = {d: a for p in parts for d, a in p[2].items()}
    return Evaluation(sum(p[0] for p in parts) / n, math.fsum(losses.tolist()) / n, devices)


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
    # (device_id, start, stop, test_stop): rows [start, stop) are the device's training shard and
    # [stop, test_stop) its own test split (empty unless --device-test-fraction is set)
    placements: list[tuple[int, int, int, int]]


@dataclass(frozen=True)
class Setup:
    """Everything an engine needs to start a run: what to convert, what to load, how to split it."""

    artifact: ArtifactRecipe | bytes  # bytes: a .tflite already made (a resumed run's own, or --artifact)
    data: DataRecipe
    devices: int
    settings: HostSettings
    partition: str = "iid"
    min_samples: int = 1
    device_test_fraction: float = 0.0
    # check a .tflite made elsewhere against the data before any round (--artifact)
    check_artifact: bool = False


@dataclass
class Prepared:
    """The outcome of preparing a run: the .tflite, what the data set was, and each host's share."""

    artifact: bytes
    dataset_info: dict[str, Any]
    hosts: list[HostData]
    tests: list[TestBlocks]
    label_counts: np.ndarray | None = None  # (devices, classes): what each device trains on
    test_sizes: np.ndarray | None = None  # (devices,): the size of each device's own test split
    report: dict[str, Any] | None = None  # the artifact report (artifact.json)


def prepare(setup: Setup, num_hosts: int) -> Prepared:
    """Load the data, partition it, cut it per host, make or check the artifact and measure it
    (imports TensorFlow)."""
    from fedsim.artifact import check_artifact, inspect

    dataset = setup.data.load()
    task = dataset.task
    if (setup.data.path or setup.data.arrays is not None) and len(dataset.y_train) < setup.devices:
        raise DataError(f"{dataset.name}: {len(dataset.y_train)} training samples cannot give {setup.devices} "
                        "devices one each; use fewer --devices")
    shards = partition(dataset.y_train, setup.devices, setup.partition, setup.settings.seed, setup.min_samples,
                       dataset.device_train)
    local_tests, tests_from_test_set = None, False
    if setup.device_test_fraction > 0:
        shards, local_tests = split_local_tests(shards, setup.device_test_fraction, setup.settings.seed)
    elif setup.partition == "natural" and dataset.device_test is not None:
        local_tests, tests_from_test_set = natural_tests(dataset), True
    info: dict[str, Any] = {
        "name": dataset.name,
        "train_samples": len(dataset.y_train),
        "test_samples": len(dataset.y_test),
        "task": task.to_dict(),
    }
    sample = (dataset.x_train[: setup.settings.batch_size], dataset.y_train[: setup.settings.batch_size])
    if isinstance(setup.artifact, bytes):
        artifact = setup.artifact
        if setup.check_artifact:
            check_artifact(artifact, task, *sample)
    else:
        artifact = dataclasses.replace(setup.artifact, task=task).build()
    report = inspect(artifact, task, sample, batch_size=setup.settings.batch_size).to_dict()
    counts = label_counts(dataset.y_train, shards, task.num_classes).astype(np.int32)
    hosts = host_data(dataset, shards, num_hosts, local_tests, tests_from_test_set)
    test_sizes = np.array([len(t) for t in local_tests] if local_tests else [0] * len(shards), dtype=np.int32)
    return Prepared(artifact, info, hosts, test_blocks(dataset, num_hosts), counts, test_sizes, report)


def natural_tests(dataset: Dataset) -> list[np.ndarray]:
    """Each device's own test samples (indices into the test set), by the data's device ids."""
    ids = np.unique(dataset.device_train)
    pos = np.minimum(np.searchsorted(ids, dataset.device_test), len(ids) - 1)
    unknown = ids[pos] != dataset.device_test
    if unknown.any():
        shown = ", ".join(map(str, np.unique(dataset.device_test[unknown])[:5]))
        raise DataError(f"{dataset.name}: device_test names device(s) {shown} that hold no training samples")
    return group_indices(pos, len(ids))


def host_data(
    dataset: Dataset, shards: Sequence[np.ndarray], num_hosts: int, local_tests: Sequence[np.ndarray] | None = None,
    tests_from_test_set: bool = False,
) -> list[HostData]:
    """Each host's devices' shards (and own test splits) back to back. Local tests are indices into
    the training set, or into the test set when `tests_from_test_set`."""
    x_all, y_all, test_offset = dataset.x_train, dataset.y_train, 0
    if tests_from_test_set:
        x_all = np.concatenate([dataset.x_train, dataset.x_test])
        y_all = np.concatenate([dataset.y_train, dataset.y_test])
        test_offset = len(dataset.y_train)
    out = []
    for ids in assign_hosts(len(shards), num_hosts):
        parts, placements, pos = [], [], 0
        for d in ids:
            test = local_tests[d] + test_offset if local_tests is not None else shards[d][:0]
            parts += [shards[d], test]
            placements.append((d, pos, pos + len(shards[d]), pos + len(shards[d]) + len(test)))
            pos += len(shards[d]) + len(test)
        order = np.concatenate(parts)
        out.append(HostData(x_all[order], y_all[order], placements))
    return out


def split_local_tests(shards: Sequence[np.ndarray], fraction: float, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each device keeps floor(fraction * n) of its own samples (seeded, at least one left to train
    on) as a test split drawn from its own distribution."""
    train, test = [], []
    for d, shard in enumerate(shards):
        n_test = min(int(fraction * len(shard)), len(shard) - 1)
        order = np.random.default_rng([seed, d, 0x7E57]).permutation(len(shard))
        test.append(np.sort(shard[order[:n_test]]))
        train.append(np.sort(shard[order[n_test:]]))
    return train, test


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
    def evaluate(self, checkpoint: bytes, device_ids: Sequence[int] = ()) -> Evaluation:
        """Test accuracy and mean cross-entropy of a checkpoint through the `infer` signature, and
        its accuracy on each of `device_ids`' own test split."""

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
