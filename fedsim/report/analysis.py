"""Pictures and tables of runs and sweeps: `fedsim plot` and `fedsim report` (the tables live in
fedsim.report.tables and are re-exported here).

Every figure says what ran in its title, labels each run by the settings that differ between the runs
shown (a setting that does not apply to a run, None, is left out of its label), draws every run in a
style of its own (colour, dashes and markers: runs whose curves coincide stay distinguishable), and
puts simulated time in the unit that fits (seconds, minutes or hours)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.experiment.config import config_fields
from fedsim.report.tables import (
    TIME_TO_ACCURACY,
    accuracy_at,
    hours_to,
    kj_to,
    report,
    summary,
    workload_row,
    write_workload,
)
from fedsim.results import load_runs

__all__ = [
    "TIME_TO_ACCURACY",
    "accuracy_at",
    "figures",
    "hours_to",
    "kj_to",
    "plot",
    "report",
    "summary",
    "workload_row",
    "write_workload",
]

MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")
DASHES = ("-", "--", ":", "-.")


def _label(row: pd.Series) -> str:
    return f"{row['devices']} devices, {row['partition']}, seed {row['seed']}"


def _given(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value) != "None"


def _varying(rounds: pd.DataFrame) -> list[str]:
    """The settings whose values differ between the runs in `rounds` (fleet first, then the rest)."""
    firsts = rounds.groupby("run", sort=False).first()
    keys = ["devices", "partition", "seed"] + [k for k in config_fields() if k not in ("out", "name")]
    return [k for k in dict.fromkeys(keys) if k in firsts and firsts[k].map(str).nunique() > 1]


def _labels(rounds: pd.DataFrame) -> dict[str, str]:
    """A legend label per run: the settings that differ between the runs shown and apply to it (no
    `server_lr=None` beside fedavg); its fleet when none differs; its folder's name where that still
    leaves two alike."""
    firsts = rounds.groupby("run", sort=False).first()
    varying = _varying(rounds)
    if varying:

        def short(value: object) -> str:  # a file setting by its name, not its whole path
            return Path(value).name if isinstance(value, str) and "/" in value else str(value)

        labels = {
            str(run): ", ".join(f"{k}={short(row[k])}" for k in varying if _given(row[k])) or Path(str(run)).name
            for run, row in firsts.iterrows()
        }
    else:
        labels = {str(run): _label(row) for run, row in firsts.iterrows()}
    if len(set(labels.values())) < len(labels):
        return {run: Path(run).name for run in labels}
    return labels


def _styles(rounds: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """One style per run, none shared: a colour each (tab10, then tab20), dashes by the setting that
    varies most, and markers so that runs whose curves coincide (a deadline that cuts the same
    devices under drop and partial) still show as two."""
    import matplotlib.pyplot as plt

    firsts = rounds.groupby("run", sort=False).first()
    varying = sorted(_varying(rounds), key=lambda k: -firsts[k].map(str).nunique())
    by = sorted(firsts[varying[0]].map(str).unique()) if varying else []
    palette = plt.get_cmap("tab10" if len(firsts) <= 10 else "tab20")
    styles: dict[str, dict[str, Any]] = {}
    for i, (run, row) in enumerate(firsts.iterrows()):
        dash = DASHES[by.index(str(row[varying[0]])) % len(DASHES)] if varying else DASHES[0]
        styles[str(run)] = {
            "color": palette(i % palette.N),
            "linestyle": dash,
            "marker": MARKERS[i % len(MARKERS)],
            "markevery": 0.1,  # markers spread along the line, offset per run below
            "markersize": 4,
        }
    return styles


def time_unit(seconds: float) -> tuple[float, str]:
    """(divisor, unit) for an axis of simulated time up to `seconds`: seconds, minutes or hours."""
    if seconds < 120:
        return 1.0, "seconds"
    if seconds < 2 * 3600:
        return 60.0, "minutes"
    return 3600.0, "hours"


def _title(what: str, table: pd.DataFrame) -> str:
    """What ran, for a figure's title: the settings shared by every run (per round, partition ...)."""
    shared = []
    for key, unit in (("per_round", "per round"), ("local_epochs", "local epochs"), ("strategy", "")):
        if key in table and table[key].map(str).nunique() == 1 and _given(table[key].iloc[0]):
            shared.append(f"{table[key].iloc[0]} {unit}".strip())
    return what + (f" ({', '.join(shared)})" if shared else "")


def figures(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The figures of the runs under `path`, by file name: accuracy.png; perplexity.png (text tasks);
    accuracy_sim_time.png (runs
    on the simulated clock); device_spread.png (runs with --device-test-fraction: the devices'
    accuracy on their own data, p10-p90 band and mean); scaling.png (runs of several fleet sizes:
    final accuracy and seconds per round against devices, mean and min-max over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = load_runs(path).dropna(subset=["test_accuracy"])  # rounds without evaluation (--eval-every)
    firsts = rounds.groupby("run", sort=False).first()
    what = _title(Path(path).name, firsts)
    labels, styles = _labels(rounds), _styles(rounds)
    out: dict[str, Any] = {}

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (run, frame) in enumerate(rounds.groupby("run", sort=False)):
        style = {**styles[str(run)], "markevery": (i % 10 / 100, 0.1)}
        ax.plot(frame["round"], frame["test_accuracy"], label=labels[str(run)], **style)
    ax.set(xlabel="round", ylabel="test accuracy", title=f"Test accuracy per round: {what}", ylim=(0, 1))
    _integer_rounds(ax)
    out["accuracy.png"] = (fig, [ax])

    if "test_perplexity" in rounds and rounds["test_perplexity"].notna().any():  # text: what a language model reads
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (run, frame) in enumerate(rounds.groupby("run", sort=False)):
            style = {**styles[str(run)], "markevery": (i % 10 / 100, 0.1)}
            ax.plot(frame["round"], frame["test_perplexity"], label=labels[str(run)], **style)
        ax.set(
            xlabel="round", ylabel="test perplexity (log scale)", yscale="log", title=f"Perplexity per round: {what}"
        )
        _integer_rounds(ax)
        out["perplexity.png"] = (fig, [ax])

    if "sim_elapsed_s" in rounds and rounds["sim_elapsed_s"].notna().any():  # runs on the simulated clock
        scale, unit = time_unit(float(rounds["sim_elapsed_s"].max()))
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (run, frame) in enumerate(rounds.groupby("run", sort=False)):
            if frame["sim_elapsed_s"].notna().any():
                style = {**styles[str(run)], "markevery": (i % 10 / 100, 0.1)}
                ax.plot(frame["sim_elapsed_s"] / scale, frame["test_accuracy"], label=labels[str(run)], **style)
        ax.set(
            xlabel=f"simulated {unit}",
            ylabel="test accuracy",
            ylim=(0, 1),
            xlim=(0, None),
            title=f"Test accuracy against simulated time: {what}",
        )
        out["accuracy_sim_time.png"] = (fig, [ax])

    if "device_acc_mean" in rounds and rounds["device_acc_mean"].notna().any():
        # one panel per partition (a band per run would blur into the next), runs styled as above
        measured = rounds[rounds.groupby("run")["device_acc_mean"].transform(lambda c: c.notna().any())]
        partitions = list(dict.fromkeys(measured["partition"]))
        fig, axes = plt.subplots(1, len(partitions), figsize=(5 * len(partitions) + 1, 4.8), sharey=True, squeeze=False)
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
        fig.suptitle(f"Per-device accuracy of the global model (mean, p10-p90):\n{what}")
        out["device_spread.png"] = (fig, list(axes[0]))

    table = summary(path)
    table = table[table["final_accuracy"].notna()] if "final_accuracy" in table else table
    if "devices" in table and table["devices"].nunique() > 1:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
        seeds = table["seed"].nunique() if "seed" in table else 1
        for partition, frame in table.groupby("partition"):
            by = frame.groupby("devices")
            for ax, column, pick in ((left, "final_accuracy", "mean"), (right, "median_round_s", "median")):
                centre = getattr(by[column], pick)()
                (line,) = ax.plot(centre.index, centre.to_numpy(), marker="o", label=str(partition))
                if seeds > 1:  # the spread over seeds, min to max
                    ax.fill_between(centre.index, by[column].min(), by[column].max(), alpha=0.2, color=line.get_color())
        over = f", mean and min-max over {seeds} seeds" if seeds > 1 else ""
        left.set(xscale="log", xlabel="devices", ylabel="final test accuracy", ylim=(0, 1))
        left.set_title(f"Accuracy against fleet size{over}")
        right.set(xscale="log", xlabel="devices", ylabel="seconds per round (median)")
        right.set_title(f"Round time against fleet size{over.replace('mean', 'median')}")
        right.set_ylim(bottom=0)  # from zero: noise between sizes must not look like a trend
        fig.suptitle(what)
        for ax in (left, right):
            _fleet_ticks(ax, sorted(table["devices"].unique()))
        out["scaling.png"] = (fig, [left, right])
    return out


def plot(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write figures(path) as PNGs into `out` (default: the given folder); the files written."""
    folder = Path(out or (path if Path(path).is_dir() else Path(path).parent))
    folder.mkdir(parents=True, exist_ok=True)
    return [_finish(fig, axes, folder / name) for name, (fig, axes) in figures(path).items()]


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
    """Grid and legend on every axis, save as PNG (a figure title kept inside it), free the figure."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout(rect=(0, 0, 1, 0.95) if fig.get_suptitle() else None)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
