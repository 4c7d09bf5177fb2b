"""The label skew a run had: entropy, EMD and the groups of devices that share labels."""

import numpy as np
import pandas as pd
import pytest
from test_partition import by_hand, synthetic_labels

from fedsim.data import label_counts, partition
from fedsim.data.skew import device_skew, fleet_skew, label_groups, partition_report


def groups_by_search(counts):
    """Connected groups of devices (devices joined when they share a label), by breadth-first search."""
    n = len(counts)
    seen, groups = set(), 0
    for start in range(n):
        if start in seen:
            continue
        groups += 1
        frontier = [start]
        seen.add(start)
        while frontier:
            d = frontier.pop()
            for e in range(n):
                if e not in seen and np.any((counts[d] > 0) & (counts[e] > 0)):
                    seen.add(e)
                    frontier.append(e)
    return groups


def test_cyclic_classes_2_on_10_devices_makes_5_groups_and_the_default_joins_them():
    labels = synthetic_labels()
    cyclic = label_counts(labels, partition(labels, 10, "classes:2:cyclic", seed=0), 10)
    assert fleet_skew(cyclic)["label_groups"] == 5
    default = label_counts(labels, partition(labels, 10, "classes:2", seed=0), 10)
    _, hand = by_hand(labels, 10, 2, "first-deterministic", seed=0)
    expected = groups_by_search(label_counts(labels, hand, 10))
    assert fleet_skew(default)["label_groups"] == expected
    assert expected < 5  # NIID-Bench's assignment connects what the cyclic one splits


def test_entropy_and_emd_by_hand():
    counts = np.array([[10, 0, 0, 0], [5, 5, 0, 0], [3, 3, 3, 3], [0, 0, 0, 0]])
    table = device_skew(counts)
    np.testing.assert_allclose(table["label_entropy"], [0, 1, 2, 0])
    overall = np.array([18, 8, 3, 3]) / 32
    np.testing.assert_allclose(
        table["emd"][:3],
        [np.abs(np.eye(4)[0] - overall).sum(), np.abs([0.5, 0.5, 0, 0] - overall).sum(), np.abs(0.25 - overall).sum()],
    )
    assert np.isnan(table["emd"][3]) and table["labels"].tolist() == [1, 2, 4, 0]
    # devices 0-2 share label 0; the empty device is a group of its own
    assert label_groups(counts).tolist() == [0, 0, 0, 1]
    assert label_groups(np.array([[1, 0, 0], [0, 0, 2], [0, 3, 0], [1, 1, 0]])).tolist() == [0, 1, 0, 0]


def test_the_report_and_the_command(tmp_path, capsys):
    import fedsim
    from fedsim.cli import main

    run = fedsim.run(
        dataset="toy_images",
        toy_samples=20,
        devices=10,
        rounds=1,
        partition="classes:2:cyclic",
        engine=fedsim.LocalEngine(),
        out=str(tmp_path / "r"),
        progress=False,
    )
    report = partition_report(run.partition)
    header, _, first = report.splitlines()[:3]
    assert header.split("|")[1].strip() == "devices" and first.split("|")[1].strip() == "10"
    assert header.split("|")[2].strip() == "label_groups" and first.split("|")[2].strip() == "5"
    assert main(["partition", str(run.path), "--plot"]) == 0
    out = capsys.readouterr().out
    assert "label_entropy" in out and (run.path / "partition.png").is_file()
    from fedsim.report.analysis import summary

    table = summary(run.path)
    assert table["label_groups"].iloc[0] == 5 and table["partition"].iloc[0] == "classes:2:cyclic"
    assert isinstance(pd.read_parquet(run.path / "partition.parquet"), pd.DataFrame)


@pytest.mark.real_data
def test_the_partitions_skews_on_fashion_mnist_are_ordered():
    from fedsim.data.fashion_mnist import DEBIAN_DIR, FILES, read_idx

    labels = read_idx(DEBIAN_DIR / FILES["y_train"])
    emd = {
        s: fleet_skew(label_counts(labels, partition(labels, 100, s, seed=0), 10))["emd_mean"]
        for s in ("iid", "dirichlet:1.0", "dirichlet:0.1", "classes:2")
    }
    assert emd["iid"] < emd["dirichlet:1.0"] < emd["dirichlet:0.1"]
    assert emd["iid"] < 0.2 and emd["classes:2"] > 1.5  # two labels of ten: 2 - 2 * 0.2 = 1.6
