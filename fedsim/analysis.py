"""Pictures and tables of runs and sweeps: `fedsim plot` and `fedsim report`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.config import config_fields
from fedsim.results import Run, load_runs


def _label(row: pd.Series) -> str:
    return f"{row['devices']} devices, {row['partition']}, seed {row['seed']}"


def _varying(rounds: pd.DataFrame) -> list[str]:
    """The settings whose values differ between the runs in `rounds` (fleet first, then the rest)."""
    firsts = rounds.groupby("run", sort=False).first()
    keys = ["devices", "partition", "seed"] + [k for k in config_fields() if k not in ("out", "name")]
    return [k for k in dict.fromkeys(keys) if k in firsts and firsts[k].map(str).nunique() > 1]


def _labels(rounds: pd.DataFrame) -> dict[str, str]:
    """A legend label per run: the settings that differ between the runs shown (its fleet when none
    does; its folder's name where that still leaves two alike)."""
    firsts = rounds.groupby("run", sort=False).first()
    varying = _varying(rounds)
    if varying:

        def short(value: object) -> str:  # a file setting by its name, not its whole path
            return Path(value).name if isinstance(value, str) and "/" in value else str(value)

        labels = {str(run): ", ".join(f"{k}={short(row[k])}" for k in varying) for run, row in firsts.iterrows()}
    else:
        labels = {str(run): _label(row) for run, row in firsts.iterrows()}
    if len(set(labels.values())) < len(labels):
        return {run: Path(run).name for run in labels}
    return labels


def _styles(rounds: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Colour by the setting that varies most, line style by the next (a seed, say), so what varies
    is read off the lines as well as the legend."""
    import matplotlib.pyplot as plt

    firsts = rounds.groupby("run", sort=False).first()
    # the setting with the most distinct values gets the colours
    varying = sorted(_varying(rounds), key=lambda k: -firsts[k].map(str).nunique())
    colours = [plt.get_cmap("tab10")(i) for i in range(10)]
    dashes = ["-", "--", ":", "-."]
    first = sorted(firsts[varying[0]].map(str).unique()) if varying else []
    second = sorted(firsts[varying[1]].map(str).unique()) if len(varying) > 1 else []
    styles: dict[str, dict[str, Any]] = {}
    for i, (run, row) in enumerate(firsts.iterrows()):
        c = first.index(str(row[varying[0]])) if varying else i
        d = second.index(str(row[varying[1]])) if second else 0
        styles[str(run)] = {"color": colours[c % len(colours)], "linestyle": dashes[d % len(dashes)]}
    return styles


def summary(path: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per run: how it ended (status), its fleet, every setting that differs between the runs,
    final / best accuracy and median seconds per round. Interrupted and failed runs are listed too."""
    rounds = load_runs(path)
    evaluated = rounds.dropna(subset=["test_accuracy"])  # --eval-every: rounds in between have none
    keys = ["status", "devices", "partition", "seed"]
    grouped = rounds.groupby("run", sort=False)
    # and every other setting whose value differs between the runs listed (lr, strategy, model, ...)
    firsts = grouped.first()
    keys += [
        k
        for k in config_fields()
        if k in firsts and k not in keys and k not in ("out", "name") and firsts[k].map(str).nunique() > 1
    ]
    table = firsts[keys].copy()
    table["rounds"] = grouped["round"].max()
    scored = evaluated.groupby("run", sort=False)
    table["final_accuracy"] = scored["test_accuracy"].last()
    table["best_accuracy"] = scored["test_accuracy"].max()
    table["median_round_s"] = grouped["wall_s"].median()
    if "device_acc_mean" in rounds and rounds["device_acc_mean"].notna().any():
        table["device_acc_p10"] = scored["device_acc_p10"].last()
        table["device_acc_mean"] = scored["device_acc_mean"].last()
        table["device_acc_p90"] = scored["device_acc_p90"].last()
    if "sim_elapsed_s" in rounds and rounds["sim_elapsed_s"].notna().any():  # the simulated clock (--fleet)
        hours = grouped["sim_elapsed_s"].max() / 3600
        table["sim_hours"] = hours
        for target in TIME_TO_ACCURACY:
            table[f"sim_h_to_{target:.2f}"] = [hours_to(evaluated[evaluated["run"] == r], target) for r in table.index]
    if "sim_energy_j" in rounds and rounds["sim_energy_j"].notna().any():  # the phones' batteries (--fleet)
        table["sim_kj"] = grouped["sim_energy_j"].sum() / 1000
        for target in TIME_TO_ACCURACY:
            table[f"sim_kj_to_{target:.2f}"] = [kj_to(rounds[rounds["run"] == r], target) for r in table.index]
    if "dp_epsilon" in rounds and rounds["dp_epsilon"].notna().any():  # the privacy spent (--dp-*)
        table["dp_epsilon"] = grouped["dp_epsilon"].last()
    skew = {run: _skew(Path(str(run))) for run in table.index}  # the label skew each run had
    for key in ("label_groups", "label_entropy", "emd_mean"):
        table[key] = [skew[run].get(key, float("nan")) for run in table.index]
    table.index = [Path(r).name for r in table.index]
    return table.sort_values(["partition", "devices", "seed"])


def _skew(folder: Path) -> dict[str, float]:
    """The run's label skew from its partition.parquet ({} if it has none)."""
    from fedsim.data.skew import fleet_skew, label_columns
    from fedsim.results import PARTITION_FILE

    if not (folder / PARTITION_FILE).is_file():
        return {}
    table = pd.read_parquet(folder / PARTITION_FILE)
    return fleet_skew(table[label_columns(table)].to_numpy()) if label_columns(table) else {}


TIME_TO_ACCURACY = (0.75, 0.80)  # fedsim report's simulated hours to reach these test accuracies


def hours_to(rounds: pd.DataFrame, target: float) -> float:
    """Simulated hours until the first evaluated round at or above `target` test accuracy (NaN: never)."""
    hit = rounds[rounds["test_accuracy"] >= target]
    return float(hit["sim_elapsed_s"].iloc[0] / 3600) if len(hit) else float("nan")


def kj_to(rounds: pd.DataFrame, target: float) -> float:
    """Kilojoules the fleet's phones spent until the first evaluated round at or above `target` test
    accuracy, that round included (NaN: never)."""
    ordered = rounds.sort_values("round")
    hit = np.flatnonzero((ordered["test_accuracy"] >= target).to_numpy())
    if not len(hit):
        return float("nan")
    return float(ordered["sim_energy_j"].iloc[: hit[0] + 1].sum() / 1000)


def accuracy_at(rounds: pd.DataFrame, hours: float) -> float:
    """Test accuracy of the last evaluated round that ended within `hours` simulated hours (NaN: none)."""
    done = rounds[rounds["sim_elapsed_s"] <= hours * 3600].dropna(subset=["test_accuracy"])
    return float(done["test_accuracy"].iloc[-1]) if len(done) else float("nan")


def report(path: str | os.PathLike[str]) -> str:
    """A compact markdown table of every run under `path`."""
    table = summary(path)
    return table.to_markdown(floatfmt=".4f")


def plot(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> list[Path]:
    """accuracy.png (test accuracy per round, a line per run); scaling.png (final accuracy and seconds
    per round against devices, log x) when runs differ in device count; device_spread.png (the
    selected devices' accuracy on their own data, p10-p90 band and mean) when runs measured it.
    Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = load_runs(path).dropna(subset=["test_accuracy"])  # rounds without evaluation (--eval-every)
    folder = Path(out or (path if Path(path).is_dir() else Path(path).parent))
    folder.mkdir(parents=True, exist_ok=True)
    written = []

    what = Path(path).name  # every figure says what was run
    labels, styles = _labels(rounds), _styles(rounds)
    fig, ax = plt.subplots(figsize=(8, 5))
    for run, frame in rounds.groupby("run", sort=False):
        ax.plot(frame["round"], frame["test_accuracy"], marker=".", label=labels[str(run)], **styles[str(run)])
    ax.set(xlabel="round", ylabel="test accuracy", title=f"Test accuracy per round: {what}", ylim=(0, 1))
    _integer_rounds(ax)
    written.append(_finish(fig, [ax], folder / "accuracy.png"))

    if "sim_elapsed_s" in rounds and rounds["sim_elapsed_s"].notna().any():  # runs on the simulated clock
        fig, ax = plt.subplots(figsize=(8, 5))
        for run, frame in rounds.groupby("run", sort=False):
            if frame["sim_elapsed_s"].notna().any():
                ax.plot(
                    frame["sim_elapsed_s"] / 3600, frame["test_accuracy"], label=labels[str(run)], **styles[str(run)]
                )
        ax.set(
            xlabel="simulated hours",
            ylabel="test accuracy",
            ylim=(0, 1),
            xlim=(0, None),
            title=f"Test accuracy against simulated time: {what}",
        )
        written.append(_finish(fig, [ax], folder / "accuracy_sim_time.png"))

    if "device_acc_mean" in rounds and rounds["device_acc_mean"].notna().any():
        # one panel per partition (a band per run would blur into the next), runs coloured as above
        measured = rounds[rounds.groupby("run")["device_acc_mean"].transform(lambda c: c.notna().any())]
        partitions = list(dict.fromkeys(measured["partition"]))
        fig, axes = plt.subplots(1, len(partitions), figsize=(5 * len(partitions) + 1, 4.5), sharey=True, squeeze=False)
        for ax, partition in zip(axes[0], partitions):
            for run, frame in measured[measured["partition"] == partition].groupby("run", sort=False):
                style = styles[str(run)]
                ax.plot(frame["round"], frame["device_acc_mean"], label=labels[str(run)], **style)
                ax.fill_between(
                    frame["round"], frame["device_acc_p10"], frame["device_acc_p90"], alpha=0.15, color=style["color"]
                )
            ax.set(xlabel="round", title=partition, ylim=(0, 1))
            _integer_rounds(ax)
        axes[0][0].set_ylabel("accuracy on the device's own data")
        fig.suptitle(f"Per-device accuracy of the global model (mean, p10-p90): {what}")
        written.append(_finish(fig, list(axes[0]), folder / "device_spread.png"))

    table = summary(path)
    if table["devices"].nunique() > 1:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        for partition, frame in table.groupby("partition"):
            by_devices = frame.groupby("devices")
            left.plot(by_devices["final_accuracy"].mean(), marker="o", label=partition)
            right.plot(by_devices["median_round_s"].median(), marker="o", label=partition)
        left.set(
            xscale="log",
            xlabel="devices",
            ylabel="final test accuracy",
            ylim=(0, 1),
            title=f"Accuracy against fleet size: {what}",
        )
        right.set(
            xscale="log",
            xlabel="devices",
            ylabel="seconds per round (median)",
            title=f"Round time against fleet size: {what}",
        )
        right.set_ylim(bottom=0)  # from zero: noise between sizes must not look like a trend
        for ax in (left, right):
            _fleet_ticks(ax, sorted(table["devices"].unique()))
        written.append(_finish(fig, [left, right], folder / "scaling.png"))
    return written


def _integer_rounds(ax) -> None:
    """Rounds are whole numbers: no ticks at 1.5."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _fleet_ticks(ax, sizes: list[int]) -> None:
    """A log axis labelled at the fleet sizes that ran, written out (10, 100, 1000), nothing else."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{n:,}" for n in sizes])


def _finish(fig, axes, path: Path) -> Path:
    """Grid and legend on every axis, save as PNG, free the figure."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def workload_row(run: Run, command: str) -> dict[str, object]:
    """What a workload reaches and how fast: one row for the README's workload table."""
    artifact = run.artifact or {}
    latency = artifact.get("latency_ms", {})
    return {
        "workload": f"{run.meta.get('model', run.config['model'])} on {run.config['dataset']}",
        "command": command,
        "devices": run.config["devices"],
        "rounds": int(run.rounds["round"].max()),
        "final_accuracy": round(run.final_accuracy, 4),
        "best_accuracy": round(float(run.rounds["test_accuracy"].max()), 4),
        "median_round_s": round(float(run.rounds["wall_s"].median()), 3),
        "run_s": round(float(run.rounds["elapsed_s"].iloc[-1]), 1),
        "parameters": artifact.get("parameters"),
        "train_batch_ms": round(latency.get("train", float("nan")), 3),
        "restore_ms": round(latency.get("restore", float("nan")), 3),
        "save_ms": round(latency.get("save", float("nan")), 3),
    }


def write_workload(row: dict[str, object], rounds: pd.DataFrame, out: str | os.PathLike[str], name: str) -> Path:
    """results/workloads/<name>.csv (the rounds table) and <name>.md (the summary row)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rounds.to_csv(folder / f"{name}.csv", index=False)
    md = folder / f"{name}.md"
    md.write_text(pd.DataFrame([row]).to_markdown(index=False) + "\n")
    return md
