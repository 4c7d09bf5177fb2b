"""The label skew a run actually had, from its partition.parquet (each device's count per label).

Per device: its samples, how many labels it holds, the entropy of its label mix (bits; log2(C) for a
uniform mix, 0 for one label) and the earth mover's distance of its mix to the fleet's: with a
distance of 1 between any two labels, the L1 distance sum_c |p_d(c) - p(c)| (Zhao et al. 2018,
"Federated Learning with Non-IID Data", who report it as EMD; 0 for the global mix, up to 2).
For the fleet: how many groups of devices share labels (two devices are in one group when a chain of
devices, each sharing a label with the next, joins them: fedsim's cyclic classes:2 on 10 devices makes
5 groups that never exchange label information; NIID-Bench's #C=2 joins them), and the means.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def label_columns(table: pd.DataFrame) -> list[str]:
    return sorted((c for c in table.columns if c.startswith("label_")), key=lambda c: int(c.split("_")[1]))


def device_skew(counts: np.ndarray) -> pd.DataFrame:
    """One row per device: samples, labels held, label entropy (bits), EMD to the fleet's mix, group."""
    counts = np.asarray(counts, np.float64)
    samples = counts.sum(axis=1)
    share = np.divide(counts, samples[:, None], out=np.zeros_like(counts), where=samples[:, None] > 0)
    logs = np.log2(share, out=np.zeros_like(share), where=share > 0)
    overall = counts.sum(axis=0) / max(counts.sum(), 1.0)
    return pd.DataFrame(
        {
            "device_id": np.arange(len(counts)),
            "samples": samples.astype(np.int64),
            "labels": (counts > 0).sum(axis=1),
            "label_entropy": -(share * logs).sum(axis=1),
            "emd": np.where(samples > 0, np.abs(share - overall).sum(axis=1), np.nan),
            "group": label_groups(counts),
        }
    )


def label_groups(counts: np.ndarray) -> np.ndarray:
    """Each device's group: devices are joined when they hold a label in common (transitively).
    Groups are numbered by their lowest device id; a device with no samples is a group of its own."""
    counts = np.asarray(counts)
    parent = list(range(counts.shape[1]))

    def find(c: int) -> int:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    held = [np.flatnonzero(row > 0).tolist() for row in counts]
    for labels in held:
        for c in labels[1:]:
            parent[find(c)] = find(labels[0])
    roots = [find(labels[0]) if labels else -1 - d for d, labels in enumerate(held)]
    first: dict[int, int] = {}
    for d, root in enumerate(roots):
        first.setdefault(root, d)
    order = {root: i for i, root in enumerate(sorted(first, key=first.__getitem__))}
    return np.array([order[r] for r in roots], np.int64)


def fleet_skew(counts: np.ndarray) -> dict[str, float]:
    """The fleet's summary: groups of devices that share labels, mean labels held, mean label
    entropy, mean and largest EMD, and the spread of sizes."""
    table = device_skew(counts)
    return {
        "devices": len(table),
        "label_groups": int(table["group"].nunique()),
        "labels_per_device": float(table["labels"].mean()),
        "label_entropy": float(table["label_entropy"].mean()),
        "emd_mean": float(table["emd"].mean()),
        "emd_max": float(table["emd"].max()),
        "samples_min": int(table["samples"].min()),
        "samples_median": float(table["samples"].median()),
        "samples_max": int(table["samples"].max()),
    }


def _markdown(table: pd.DataFrame) -> str:
    """Integers as integers, other numbers to three decimals."""
    shown = table.copy()
    for column in shown.columns:
        if pd.api.types.is_float_dtype(shown[column]):
            shown[column] = shown[column].map(lambda v: f"{v:.3f}")
        else:
            shown[column] = shown[column].map(str)
    return shown.to_markdown(index=False)


def partition_report(partition: pd.DataFrame) -> str:
    """`fedsim partition DIR`: the fleet's summary and, for fleets of up to 50 devices, every device."""
    counts = partition[label_columns(partition)].to_numpy()
    summary = _markdown(pd.DataFrame([fleet_skew(counts)]))
    table = device_skew(counts)
    if len(table) > 50:
        return summary + f"\n\n({len(table)} devices; the per-device table is in fedsim.data.skew.device_skew)"
    return summary + "\n\n" + _markdown(table)


def plot_partition(partition: pd.DataFrame, path: str, title: str) -> str:
    """The device-by-label matrix (samples per label) as an image, devices in rows, for small fleets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = label_columns(partition)
    counts = partition[columns].to_numpy()
    groups = label_groups(counts)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * len(columns), 1.5 + 0.18 * len(counts)))
    shown = ax.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set(
        xlabel="label", ylabel="device", title=f"{title}\n{len(set(groups.tolist()))} group(s) of devices share labels"
    )
    ax.set_xticks(range(len(columns)), [c.split("_")[1] for c in columns])
    if len(counts) <= 40:
        ax.set_yticks(range(len(counts)), [f"{d} (g{g})" for d, g in enumerate(groups)], fontsize="small")
    fig.colorbar(shown, ax=ax, label="samples")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
