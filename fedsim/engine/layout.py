"""How a run's data is laid out for the hosts: every device's shard back to back (shared by all hosts,
so any host runs any device), the test set in fixed blocks, and the preparation that makes them."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsim.core.task import Task
from fedsim.data import DataRecipe, check_devices_fit, label_counts, partition
from fedsim.data.dataset import DataError, Dataset
from fedsim.data.partition import group_indices
from fedsim.data.settings import DataSettings
from fedsim.engine.settings import HostSettings
from fedsim.model.builders import ArtifactRecipe

TestBlocks = list[tuple[np.ndarray, np.ndarray]]
EVAL_BLOCK = 500  # test samples per `infer` call; fixed, so results do not depend on the host count


def test_blocks(dataset: Dataset, num_hosts: int) -> list[TestBlocks]:
    """The test set cut into fixed blocks, dealt round-robin to the hosts to spread evaluation."""
    starts = range(0, len(dataset.y_test), EVAL_BLOCK)
    blocks = [(dataset.x_test[i : i + EVAL_BLOCK], dataset.y_test[i : i + EVAL_BLOCK]) for i in starts]
    return [blocks[h::num_hosts] for h in range(num_hosts)]


@dataclass(frozen=True)
class ShardData:
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
    unscored: tuple[int, ...] = ()  # classes accuracy does not count (Task.unscored)

    @property
    def devices(self) -> int:
        return len(self.bounds)

    @property
    def samples(self) -> np.ndarray:
        return self.bounds[:, 1] - self.bounds[:, 0]


@dataclass(frozen=True)
class Setup:
    """Everything an engine needs to start a run: what to convert, what to load, how to split it."""

    artifact: ArtifactRecipe | bytes  # bytes: a .tflite already made (a resumed run's own, or --artifact)
    data: DataRecipe
    devices: int
    settings: HostSettings
    split: DataSettings = field(default_factory=DataSettings)  # how the data is split: partition, tests
    # check a .tflite made elsewhere against the data before any round (--artifact)
    check_artifact: bool = False
    # conversions of this recipe another process has made (fedsim.model.cache.for_task), by key
    known_artifacts: dict[tuple[Any, ...], bytes] = field(default_factory=dict)


@dataclass
class Prepared:
    """The outcome of preparing a run: the .tflite, what the data set was, the fleet's data and each
    host's blocks of the test set."""

    artifact: bytes
    dataset_info: dict[str, Any]
    fleet: ShardData | None
    tests: list[TestBlocks]
    label_counts: np.ndarray | None = None  # (devices, classes): what each device trains on
    test_sizes: np.ndarray | None = None  # (devices,): the size of each device's own test split
    report: dict[str, Any] | None = None  # the artifact report (artifact.json)
    convert_s: float = 0.0  # seconds spent making the artifact (0 when a cache had it)


@dataclass
class PreparedData:
    """The data half of a preparation (no TensorFlow, no artifact): the fleet's shards and what the
    artifact's checks and report are measured with."""

    dataset: Dataset
    info: dict[str, Any]
    fleet: ShardData
    label_counts: np.ndarray
    test_sizes: np.ndarray
    sample: tuple[np.ndarray, np.ndarray]  # a batch of the training set at `batch_size`
    batch_size: int


def prepare_data(setup: Setup) -> PreparedData:
    """Load the data, partition it and lay the fleet's shards out (numpy only)."""
    dataset = setup.data.load()
    task = dataset.task
    if setup.data.path or setup.data.arrays is not None:  # sizes known only once loaded (an .npz)
        check_devices_fit(dataset.name, len(dataset.y_train), setup.devices)
    shards = partition(
        dataset.y_train,
        setup.devices,
        setup.split.partition_spec,
        setup.settings.seed,
        setup.split.min_samples,
        dataset.device_train,
    )
    local_tests, tests_from_test_set = None, False
    if setup.split.device_test_fraction > 0:
        shards, local_tests = split_local_tests(shards, setup.split.device_test_fraction, setup.settings.seed)
    elif setup.split.partition_spec == "natural" and dataset.device_test is not None:
        local_tests, tests_from_test_set = natural_tests(dataset), True
    info: dict[str, Any] = {
        "name": dataset.name,
        "train_samples": len(dataset.y_train),
        "test_samples": len(dataset.y_test),
        "task": task.to_dict(),
    }
    # measured at the largest batch a device trains: a batch above every shard (FedSGD's B = infinity)
    # is each device's whole shard, and timing a batch of the whole data set would take minutes
    batch_size = max(1, min(setup.settings.batch_size, max((len(s) for s in shards), default=1)))
    sample = (dataset.x_train[:batch_size], dataset.y_train[:batch_size])
    counts = label_counts(dataset.y_train, shards, task.num_classes).astype(np.int32)
    fleet = shard_data(dataset, shards, local_tests, tests_from_test_set)
    test_sizes = (fleet.bounds[:, 2] - fleet.bounds[:, 1]).astype(np.int32)
    return PreparedData(dataset, info, fleet, counts, test_sizes, sample, batch_size)


def ready_artifact(setup: Setup, task: Task) -> bytes | None:
    """The run's artifact where it needs no TensorFlow to have and to report on: given as bytes and not
    to be checked, or a built-in recipe's conversion in a cache (this process's, `known_artifacts`, the
    disk's), its identity remembered."""
    from fedsim.artifact.checks import IDENTITY_FACT
    from fedsim.model import cache

    if isinstance(setup.artifact, bytes):
        found = None if setup.check_artifact else setup.artifact
    else:
        found = cache.lookup(dataclasses.replace(setup.artifact, task=task), setup.known_artifacts)
    # its report names its identity, which takes TensorFlow's protobufs to compute where not remembered
    return found if found is not None and cache.recall(IDENTITY_FACT, found) is not None else None


def prepare(setup: Setup, num_hosts: int) -> Prepared:
    """Load the data, partition it, cut it per host, make or check the artifact and measure it
    (imports TensorFlow where the artifact must be converted or checked)."""
    from fedsim.artifact import check_artifact, inspect

    data = prepare_data(setup)
    task = data.dataset.task
    convert_s = 0.0
    if isinstance(setup.artifact, bytes):
        artifact = setup.artifact
        if setup.check_artifact:
            check_artifact(artifact, task, *data.sample)
    else:
        from fedsim.model import cache

        began = time.perf_counter()
        artifact = cache.build(dataclasses.replace(setup.artifact, task=task), setup.known_artifacts)
        convert_s = time.perf_counter() - began
    report = inspect(artifact, task, data.sample, batch_size=data.batch_size).to_dict()
    tests = test_blocks(data.dataset, num_hosts)
    return Prepared(artifact, data.info, data.fleet, tests, data.label_counts, data.test_sizes, report, convert_s)


def natural_tests(dataset: Dataset) -> list[np.ndarray]:
    """Each device's own test samples (indices into the test set), by the data's device ids."""
    ids = np.unique(dataset.device_train)
    pos = np.minimum(np.searchsorted(ids, dataset.device_test), len(ids) - 1)
    unknown = ids[pos] != dataset.device_test
    if unknown.any():
        shown = ", ".join(map(str, np.unique(dataset.device_test[unknown])[:5]))
        raise DataError(f"{dataset.name}: device_test names device(s) {shown} that hold no training samples")
    return group_indices(pos, len(ids))


def shard_data(
    dataset: Dataset,
    shards: Sequence[np.ndarray],
    local_tests: Sequence[np.ndarray] | None = None,
    tests_from_test_set: bool = False,
) -> ShardData:
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
    return ShardData(x_all[order], y_all[order], bounds, dataset.task.unscored)


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


def prepare_data_niced(setup: Setup) -> PreparedData:
    """prepare_data on a thread of lower priority (Linux: per thread), so that Ray's start, which it
    overlaps, goes first: that start waits on its raylet in whole seconds, and at normal priority the
    preparation pushed it to the next second in 3 of 6 starts (1 of 6 niced)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # (no setpriority here, or not allowed)
        pass
    return prepare_data(setup)
