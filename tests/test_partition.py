"""Each partitioner's defining property, on the real Fashion-MNIST labels."""

import numpy as np
import pytest

from fedsim.config import Config, ConfigError
from fedsim.data import PartitionError, label_counts, parse_spec, partition
from fedsim.data.fashion_mnist import DEBIAN_DIR, FILES, read_idx


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


pytestmark = pytest.mark.real_data


def test_iid_devices_see_the_global_label_mix(labels):
    shards = partition(labels, 100, "iid", seed=0)
    counts = label_counts(labels, shards, 10)
    assert covers_without_overlap(shards, len(labels)) and sum(map(len, shards)) == 60000
    assert max_class_share(counts) < 0.2  # ~0.1 for a 10-class uniform mix


def test_dirichlet_skew_grows_as_alpha_falls(labels):
    shares = {
        a: max_class_share(label_counts(labels, partition(labels, 100, f"dirichlet:{a}", seed=0), 10))
        for a in (10.0, 1.0, 0.1)
    }
    assert shares[10.0] < shares[1.0] < shares[0.1]
    assert shares[0.1] > 0.6  # mostly one label per device
    shards = partition(labels, 100, "dirichlet:0.1", seed=0, min_samples=10)
    assert min(map(len, shards)) >= 10 and covers_without_overlap(shards, len(labels))


def test_shards_gives_each_device_k_sorted_shards(labels):
    shards = partition(labels, 100, "shards:2", seed=0)
    counts = label_counts(labels, shards, 10)
    assert {len(s) for s in shards} == {600}  # 200 shards of 300
    assert ((counts > 0).sum(axis=1) <= 2).all()  # 300-sample shards never straddle a label here
    assert covers_without_overlap(shards, len(labels))


def test_classes_gives_exactly_k_labels(labels):
    for k in (1, 2, 3):
        counts = label_counts(labels, partition(labels, 50, f"classes:{k}", seed=1), 10)
        assert ((counts > 0).sum(axis=1) == k).all()


def test_quantity_skews_sizes_but_not_labels(labels):
    sizes = {s: np.array([len(x) for x in partition(labels, 100, f"quantity:{s}", seed=0)]) for s in (0.1, 2.0)}
    assert sizes[0.1].sum() == sizes[2.0].sum() == 60000
    assert sizes[2.0].std() > 5 * sizes[0.1].std()
    assert sizes[2.0].min() >= 1
    assert max_class_share(label_counts(labels, partition(labels, 100, "quantity:2.0", seed=0), 10)) < 0.6


@pytest.mark.parametrize("spec", ["iid", "dirichlet:0.5", "shards:2", "classes:2", "quantity:1.0"])
def test_every_partitioner_is_seeded(labels, spec):
    a, b = partition(labels, 40, spec, seed=3), partition(labels, 40, spec, seed=3)
    c = partition(labels, 40, spec, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert min(map(len, a)) >= 1


def test_impossible_minimum_names_the_devices(labels):
    with pytest.raises(PartitionError, match="below --min-samples 700 \\(devices"):
        partition(labels, 100, "shards:2", seed=0, min_samples=700)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("dirichlet", "needs a float"),
        ("shards:x", "needs a int"),
        ("zipf:2", "unknown kind"),
        ("classes:0", "must be positive"),
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
