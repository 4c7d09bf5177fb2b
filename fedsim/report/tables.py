"""The tables of runs and sweeps: `fedsim report`'s summary (one row per run, failed sweep points
included), time, energy and accuracy at targets, and the README's workload rows."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.experiment.config import config_fields
from fedsim.results import Run, load_runs


def summary(path: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per run: how it ended (status), its fleet, every setting that differs between the runs,
    final / best accuracy and median seconds per round. Interrupted and failed runs are listed too,
    and a sweep's points that failed before their first round (with their error)."""
    try:
        rounds = load_runs(path)
    except FileNotFoundError:
        failed = _failed_points(Path(path), set())
        if failed.empty:
            raise
        return failed  # a sweep whose every point failed before its first round
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
    if "test_perplexity" in rounds and rounds["test_perplexity"].notna().any():  # text: a keyboard's metrics
        table["final_top3_accuracy"] = scored["test_top3_accuracy"].last()
        table["final_perplexity"] = scored["test_perplexity"].last()
        table["best_perplexity"] = scored["test_perplexity"].min()
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
    table = pd.concat([table, _failed_points(Path(path), set(table.index))])
    return table.sort_values(["partition", "devices", "seed"])


def _failed_points(folder: Path, listed: set[str]) -> pd.DataFrame:
    """A sweep's points that left no run folder (failed before their first round), from sweep.json:
    one row each, status `failed` and the error, so a report lists every point."""
    try:
        saved = json.loads((folder / "sweep.json").read_text())
    except (OSError, ValueError):
        return pd.DataFrame()
    rows = {
        p["point"]: {k: v for k, v in p.items() if k != "point"}
        for p in saved.get("points", [])
        if p.get("status") == "failed" and p["point"] not in listed
    }
    return pd.DataFrame.from_dict(rows, orient="index")


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


def publish(
    table: pd.DataFrame,
    out: str | os.PathLike[str],
    name: str,
    header: str = "",
    footer: str = "",
    figure: Any = None,
    index: bool = False,
    csv: pd.DataFrame | None = None,
    **markdown: Any,
) -> Path:
    """What an experiment script leaves: <name>.csv (the table, or `csv` where it keeps more columns
    than the markdown shows), <name>.md (`header`, the table as markdown, `footer`; `markdown`:
    to_markdown's options), <name>.png (`figure`, a matplotlib figure) in `out`; prints the markdown
    and the files written. Returns the .md's path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (table if csv is None else csv).to_csv(folder / f"{name}.csv", index=index)
    parts = [header.rstrip(), str(table.to_markdown(index=index, **markdown)), footer.rstrip()]
    text = "\n\n".join(p for p in parts if p) + "\n"
    (folder / f"{name}.md").write_text(text)
    wrote = [f"{name}.md", f"{name}.csv"]
    if figure is not None:
        figure.savefig(folder / f"{name}.png", dpi=120)
        wrote.append(f"{name}.png")
    print(text)
    print(f"wrote {', '.join(str(folder / w) for w in wrote)}", flush=True)
    return folder / f"{name}.md"


def write_workload(row: dict[str, object], rounds: pd.DataFrame, out: str | os.PathLike[str], name: str) -> Path:
    """results/workloads/<name>.csv (the rounds table) and <name>.md (the summary row)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    rounds.to_csv(folder / f"{name}.csv", index=False)
    md = folder / f"{name}.md"
    md.write_text(pd.DataFrame([row]).to_markdown(index=False) + "\n")
    return md
