"""The engine interface: share the fleet's data with every host once, then deal each round's devices
to hosts by their expected cost."""

from __future__ import annotations

import dataclasses
import heapq
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from fedsim.checkpoint import UpdateScreen
from fedsim.data import DataRecipe, check_devices_fit, label_counts, partition
from fedsim.data.dataset import DataError, Dataset
from fedsim.data.partition import group_indices
from fedsim.model.builders import ArtifactRecipe
from fedsim.strategies.attacks import Attack
from fedsim.strategies.base import HONEST, DevicePlan, Partial, Strategy


class EngineError(RuntimeError):
    """The engine could not start the run (e.g. its preparation ran out of memory); one line says why."""


@dataclass(frozen=True)
class HostSettings:
    """What every host needs to run its devices; fixed for a run."""

    local_epochs: int
    batch_size: int
    seed: int


@dataclass(frozen=True)
class HostPipeline:
    """What a host does with each device's upload in a round, in order: check it against the model
    (shapes, finite values), let an attacker rewrite it (`attack`, for devices whose plan names it),
    screen it (`screen`: norm bound, clipping), then accumulate it: a running sum of
    strategy.weight(samples) * w ("sum") or the vector itself ("stack"). `plan` holds the devices
    whose instructions differ from the defaults (FedProx's mu, an attacker's role)."""

    screen: UpdateScreen
    strategy: Strategy
    accumulate: str = "sum"
    attack: Attack | None = None
    plan: Mapping[int, DevicePlan] = field(default_factory=dict)
    num_classes: int = 0  # for label-flipping attackers

    @classmethod
    def plain(cls, checkpoint: bytes, strategy: Strategy | None = None) -> HostPipeline:
        """The pipeline of a plain run (no screening beyond the model's shapes, no attack) of
        `strategy` (FedAvg) for the model `checkpoint` holds: for driving an engine by hand."""
        from fedsim.checkpoint import read_checkpoint, spec_of
        from fedsim.strategies.fedavg import FedAvg

        strategy = strategy or FedAvg()
        return cls(UpdateScreen(spec_of(read_checkpoint(checkpoint))), strategy, strategy.accumulate)

    @property
    def needs_global(self) -> bool:
        """Whether the host needs the global weights as a vector (distance bounds, attacks on it)."""
        return self.screen.needs_global or (self.attack is not None and self.attack.on_host)

    def only(self, device_ids: Sequence[int]) -> HostPipeline:
        """This pipeline with the plan cut to `device_ids` (what one host needs to carry)."""
        if not self.plan:
            return self
        return dataclasses.replace(self, plan={d: self.plan[d] for d in device_ids if d in self.plan})

    def role(self, device_id: int) -> str:
        plan = self.plan.get(device_id)
        return plan.role if plan is not None else HONEST


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


@dataclass
class RoundResult:
    """Every selected device's report, plus the hosts' partials of the accepted updates."""

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


@dataclass(frozen=True)
class FleetData:
    """Every device's training data back to back, shared by all hosts, so any host can run any device.

    On Ray it is one object in the object store: hosts on a node map it without a copy, so the fleet's
    data is held once per node whatever the number of hosts, and a registered device costs one row of
    `bounds` (24 bytes), not an object.
    """

    x: np.ndarray
    y: np.ndarray
    # (devices, 3) int64, row = device id: rows [start, stop) of x / y are the device's training shard
    # and [stop, test_stop) its own test split (empty unless it has one)
    bounds: np.ndarray

    @property
    def devices(self) -> int:
        return len(self.bounds)

    @property
    def samples(self) -> np.ndarray:
        return self.bounds[:, 1] - self.bounds[:, 0]


def expected_costs(samples: np.ndarray, settings: HostSettings, latency_ms: Mapping[str, float] | None) -> np.ndarray:
    """Expected seconds of each device's round: restore + its train batches + save, at the latencies
    the artifact report measured (one batch per 32 samples and 1 ms of fixed cost without one)."""
    latency = latency_ms or {}
    batches = -(-np.asarray(samples, dtype=np.int64) // settings.batch_size) * settings.local_epochs
    fixed = latency.get("restore", 0.5) + latency.get("save", 0.5)
    return (fixed + batches * latency.get("train", 0.3)) / 1e3


def deal(device_ids: Sequence[int], costs: np.ndarray | None, num_hosts: int) -> dict[int, list[int]]:
    """A round's devices per host (hosts with none left out), so the round ends when the work is
    done rather than when the unluckiest host is: the most expensive device first, each to the host
    with the least expected work so far (LPT). Deterministic; each host's list is in id order.
    Without costs every device counts the same."""
    ids = sorted(int(d) for d in device_ids)
    if num_hosts <= 1:
        return {0: ids} if ids else {}
    cost = (lambda d: float(costs[d])) if costs is not None else (lambda d: 1.0)
    loads = [(0.0, h) for h in range(num_hosts)]
    per_host: dict[int, list[int]] = {}
    for d in sorted(ids, key=lambda d: (-cost(d), d)):
        load, h = heapq.heappop(loads)
        per_host.setdefault(h, []).append(d)
        heapq.heappush(loads, (load + cost(d), h))
    return {h: sorted(mine) for h, mine in sorted(per_host.items())}


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
    """The outcome of preparing a run: the .tflite, what the data set was, the fleet's data and each
    host's blocks of the test set."""

    artifact: bytes
    dataset_info: dict[str, Any]
    fleet: FleetData | None
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
    if setup.data.path or setup.data.arrays is not None:  # sizes known only once loaded (an .npz)
        check_devices_fit(dataset.name, len(dataset.y_train), setup.devices)
    shards = partition(
        dataset.y_train, setup.devices, setup.partition, setup.settings.seed, setup.min_samples, dataset.device_train
    )
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
    fleet = fleet_data(dataset, shards, local_tests, tests_from_test_set)
    test_sizes = (fleet.bounds[:, 2] - fleet.bounds[:, 1]).astype(np.int32)
    return Prepared(artifact, info, fleet, test_blocks(dataset, num_hosts), counts, test_sizes, report)


def natural_tests(dataset: Dataset) -> list[np.ndarray]:
    """Each device's own test samples (indices into the test set), by the data's device ids."""
    ids = np.unique(dataset.device_train)
    pos = np.minimum(np.searchsorted(ids, dataset.device_test), len(ids) - 1)
    unknown = ids[pos] != dataset.device_test
    if unknown.any():
        shown = ", ".join(map(str, np.unique(dataset.device_test[unknown])[:5]))
        raise DataError(f"{dataset.name}: device_test names device(s) {shown} that hold no training samples")
    return group_indices(pos, len(ids))


def fleet_data(
    dataset: Dataset,
    shards: Sequence[np.ndarray],
    local_tests: Sequence[np.ndarray] | None = None,
    tests_from_test_set: bool = False,
) -> FleetData:
    """Every device's shard (and own test split) back to back, in device order. Local tests are
    indices into the training set, or into the test set when `tests_from_test_set`."""
    x_all, y_all, test_offset = dataset.x_train, dataset.y_train, 0
    if tests_from_test_set:
        x_all = np.concatenate([dataset.x_train, dataset.x_test])
        y_all = np.concatenate([dataset.y_train, dataset.y_test])
        test_offset = len(dataset.y_train)
    train_sizes = np.fromiter((len(s) for s in shards), np.int64, len(shards))
    test_sizes = (
        np.fromiter((len(t) for t in local_tests), np.int64, len(shards))
        if local_tests is not None
        else np.zeros(len(shards), np.int64)
    )
    ends = np.cumsum(train_sizes + test_sizes)
    bounds = np.stack([ends - train_sizes - test_sizes, ends - test_sizes, ends], axis=1)
    if local_tests is None:
        order = np.concatenate(shards) if len(shards) else np.zeros(0, np.int64)
    else:
        order = np.concatenate([part for d in range(len(shards)) for part in (shards[d], local_tests[d] + test_offset)])
    return FleetData(x_all[order], y_all[order], bounds)


def split_local_tests(
    shards: Sequence[np.ndarray], fraction: float, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
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

    @abstractmethod
    def run_round(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], pipeline: HostPipeline
    ) -> RoundResult:
        """Run one round on the given devices: one report per device, failures included, and one
        partial per host that accepted an update (see HostPipeline)."""

    def set_costs(self, prepared: Prepared, settings: HostSettings) -> None:
        """Expected device costs from the partition and the artifact report's measured latencies."""
        if prepared.label_counts is not None:
            latency = (prepared.report or {}).get("latency_ms")
            self.costs = expected_costs(prepared.label_counts.sum(axis=1), settings, latency)

    def split(self, device_ids: Sequence[int]) -> dict[int, list[int]]:
        """A round's device ids per host index, dealt by expected cost (hosts with none left out)."""
        return deal(device_ids, self.costs, self.num_hosts)

    def close(self) -> None:
        """Release hosts and whatever the engine started."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
