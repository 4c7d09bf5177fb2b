"""Each partitioner's defining property, on the real Fashion-MNIST labels."""

import re

import numpy as np
import pytest

from fedsim.data import PartitionError, label_counts, parse_spec, partition
from fedsim.data.fashion_mnist import DEBIAN_DIR, FILES, read_idx
from fedsim.experiment.config import Config, ConfigError


@pytest.fixture(scope="module")
def labels():
    if not (DEBIAN_DIR / FILES["y_train"]).is_file():
        pytest.fail("CI installs dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)")
    return read_idx(DEBIAN_DIR / FILES["y_train"])


def covers_without_overlap(shards, n):
    together = np.concatenate(shards)
    return len(together) == len(np.unique(together)) and together.max() < n


def max_class_share(counts):
    return float(np.mean(counts.max(axis=1) / np.maximum(counts.sum(axis=1), 1)))


@pytest.mark.real_data
def test_iid_devices_see_the_global_label_mix(labels):
    shards = partition(labels, 100, "iid", seed=0)
    counts = label_counts(labels, shards, 10)
    assert covers_without_overlap(shards, len(labels)) and sum(map(len, shards)) == 60000
    assert max_class_share(counts) < 0.2  # ~0.1 for a 10-class uniform mix


@pytest.mark.real_data
def test_dirichlet_skew_grows_as_alpha_falls(labels):
    shares = {
        a: max_class_share(label_counts(labels, partition(labels, 100, f"dirichlet:{a}", seed=0), 10))
        for a in (10.0, 1.0, 0.1)
    }
    assert shares[10.0] < shares[1.0] < shares[0.1]
    assert shares[0.1] > 0.6  # mostly one label per device
    shards = partition(labels, 100, "dirichlet:0.1", seed=0, min_samples=10)
    assert min(map(len, shards)) >= 10 and covers_without_overlap(shards, len(labels))


@pytest.mark.real_data
def test_shards_gives_each_device_k_sorted_shards(labels):
    shards = partition(labels, 100, "shards:2", seed=0)
    counts = label_counts(labels, shards, 10)
    assert {len(s) for s in shards} == {600}  # 200 shards of 300
    assert ((counts > 0).sum(axis=1) <= 2).all()  # 300-sample shards never straddle a label here
    assert covers_without_overlap(shards, len(labels))


@pytest.mark.real_data
def test_classes_gives_exactly_k_labels(labels):
    for k in (1, 2, 3):
        counts = label_counts(labels, partition(labels, 50, f"classes:{k}", seed=1), 10)
        assert ((counts > 0).sum(axis=1) == k).all()


@pytest.mark.real_data
def test_quantity_skews_sizes_but_not_labels(labels):
    sizes = {s: np.array([len(x) for x in partition(labels, 100, f"quantity:{s}", seed=0)]) for s in (0.1, 2.0)}
    assert sizes[0.1].sum() == sizes[2.0].sum() == 60000
    assert sizes[2.0].std() > 5 * sizes[0.1].std()
    assert sizes[2.0].min() >= 1
    assert max_class_share(label_counts(labels, partition(labels, 100, "quantity:2.0", seed=0), 10)) < 0.6


@pytest.mark.real_data
@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "shards:2", "classes:2", "quantity:1.0"])
def test_every_partitioner_is_seeded(labels, spec):
    a, b = partition(labels, 40, spec, seed=3), partition(labels, 40, spec, seed=3)
    c = partition(labels, 40, spec, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert min(map(len, a)) >= 1


@pytest.mark.real_data
def test_impossible_minimum_names_the_devices(labels):
    with pytest.raises(PartitionError, match="below --min-samples 700 \\(devices"):
        partition(labels, 100, "shards:2", seed=0, min_samples=700)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("dirichlet", "needs a float"),
        ("shards:x", "needs a int"),
        ("zipf:2", "unknown kind"),
        ("classes:0", "must be a positive number"),
        ("classes:2:sorted", "classes's mode must be one of first-deterministic, random, deterministic, cyclic"),
        ("iid:2", "takes no argument"),
    ],
)
def test_malformed_specs(spec, message):
    with pytest.raises(PartitionError, match=message):
        parse_spec(spec)
    with pytest.raises(ConfigError, match=message):
        Config(partition=spec)


def test_per_round_selection():
    assert Config(devices=50, per_round=7).devices_per_round == 7
    with pytest.raises(ConfigError, match="give one of them"):
        Config(devices=50, per_round=7, fraction=0.5)


def test_natural_partition_uses_the_datas_device_ids():
    from fedsim.data.partition import PartitionError

    labels = np.array([0, 1, 0, 1, 1])
    shards = partition(labels, 3, "natural", owners=np.array([5, 5, 9, 2, 9]))
    assert [s.tolist() for s in shards] == [[3], [0, 1], [2, 4]]  # ids 2, 5, 9 -> devices 0, 1, 2
    with pytest.raises(PartitionError, match="names 3 devices but --devices is 4; set --devices 3"):
        partition(labels, 4, "natural", owners=np.array([5, 5, 9, 2, 9]))
    with pytest.raises(PartitionError, match="needs data that carries device ids"):
        partition(labels, 3, "natural")


def synthetic_labels(per_class=50, classes=10, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


def by_hand(labels, n, k, mode, seed):
    """The classes:K partition built from its definition, with the same seeded draws: the labels each
    device holds (see fedsim.data.partition's docstring), then each label's samples, shuffled, split
    equally among its holders in id order."""
    rng = np.random.default_rng([seed, 0x9A27])
    C = len(np.unique(labels))
    if mode == "first-deterministic":
        held = []
        for i in range(n):
            current = [i % C]
            while len(current) < k:
                c = int(rng.integers(C))
                if c not in current:
                    current.append(c)
            held.append(current)
    elif mode == "random":
        held = [sorted(rng.choice(C, size=k, replace=False).tolist()) for _ in range(n)]
    elif mode == "deterministic":
        held = [[(i + j) % C for j in range(k)] for i in range(n)]
    else:  # cyclic
        perm = rng.permutation(C)
        held = [[int(perm[(i * k + j) % C]) for j in range(k)] for i in range(n)]
    parts = [[] for _ in range(n)]
    for c in range(C):
        holders = [i for i in range(n) if c in held[i]]
        if holders:
            idx = rng.permutation(np.flatnonzero(labels == c))
            for i, piece in zip(holders, np.array_split(idx, len(holders))):
                parts[i].append(piece)
    return held, [np.sort(np.concatenate(p)) for p in parts]


@pytest.mark.parametrize("mode", ["first-deterministic", "random", "deterministic", "cyclic"])
def test_classes_modes_match_their_definition_built_by_hand(mode):
    labels = synthetic_labels()
    _, expected = by_hand(labels, 10, 2, mode, seed=5)
    shards = partition(labels, 10, f"classes:2:{mode}", seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(shards, expected))
    counts = label_counts(labels, shards, 10)
    assert ((counts > 0).sum(axis=1) == 2).all()
    for c in range(10):  # each label split equally (to one sample) among its holders
        held_by = counts[:, c][counts[:, c] > 0]
        assert len(held_by) == 0 or held_by.max() - held_by.min() <= 1
    if mode == "first-deterministic":  # NIID-Bench's #C=2: device i holds label i % 10 and one more
        assert all(counts[i, i % 10] > 0 for i in range(10))
    if mode == "deterministic":
        assert [sorted(np.flatnonzero(counts[i]).tolist()) for i in range(3)] == [[0, 1], [1, 2], [2, 3]]


def test_classes_defaults_to_the_niid_bench_definition_and_records_it():
    assert Config(partition="classes:2").partition_spec == "classes:2:first-deterministic"
    assert Config(partition="dirichlet:0.3").partition_spec == "dirichlet:0.3"
    labels = synthetic_labels()
    a = partition(labels, 10, "classes:2", seed=1)
    b = partition(labels, 10, "classes:2:first-deterministic", seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_run_folder_from_before_the_modes_keeps_the_cyclic_assignment():
    from fedsim.results.migrate import flat_config

    assert flat_config({"partition": "classes:2", "devices": 10})["partition"] == "classes:2:cyclic"
    sectioned = {"run": {"devices": 10}, "data": {"partition": "classes:2:random"}}
    assert flat_config(sectioned)["partition"] == "classes:2:random"


def test_the_per_device_dirichlet_fills_every_device_at_any_size():
    labels = synthetic_labels(per_class=60)  # 600 samples
    for devices in (10, 600, 1500):  # 1500 devices: more than samples, the pools are refilled
        shards = partition(labels, devices, "dirichlet:0.1:device", seed=2)
        sizes = np.array([len(s) for s in shards])
        assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1
        if devices <= 600:
            assert covers_without_overlap(shards, len(labels)) and sizes.sum() == 600
    skewed = label_counts(labels, partition(labels, 10, "dirichlet:0.1:device", seed=2), 10)
    mixed = label_counts(labels, partition(labels, 10, "dirichlet:100:device", seed=2), 10)
    assert max_class_share(skewed) > 0.6 > max_class_share(mixed)


def test_the_per_class_dirichlet_fails_in_seconds_with_advice_that_works():
    import time

    labels = synthetic_labels(per_class=600)
    began = time.monotonic()
    with pytest.raises(PartitionError, match="Use --partition dirichlet:0.1:device"):
        partition(labels, 3000, "dirichlet:0.1", seed=0)
    assert time.monotonic() - began < 10
    assert min(map(len, partition(labels, 3000, "dirichlet:0.1:device", seed=0))) >= 1


@pytest.mark.parametrize(
    ("devices", "spec"), [(100_000, "dirichlet:0.1"), (10_000, "dirichlet:0.1"), (10_000, "dirichlet:1.0")]
)
def test_fleets_of_fashion_mnist_size_partition_in_a_minute_or_fail_in_seconds_with_advice(devices, spec):
    """The README's promise for 10,000 and 100,000 devices on Fashion-MNIST's 60,000 training labels:
    every device non-empty within a minute, or a failure within seconds whose advice works."""
    import time

    labels = synthetic_labels(per_class=6000)  # Fashion-MNIST's size
    began = time.monotonic()
    try:
        shards = partition(labels, devices, spec, seed=0)
    except PartitionError as e:
        assert time.monotonic() - began < 10, "a failure must come in seconds"
        advice = re.search(r"Use --partition (\S+)", str(e)).group(1).rstrip(".;,")
        began = time.monotonic()
        shards = partition(labels, devices, advice, seed=0)
    assert time.monotonic() - began < 60
    assert len(shards) == devices and min(map(len, shards)) >= 1
