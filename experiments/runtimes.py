"""TFLite and ExecuTorch side by side: the same models, the same initial weights and data, FedAvg.

    python experiments/runtimes.py                          # every row (~15 minutes here)
    python experiments/runtimes.py --rows mlp-100 --rounds 5

Rows: mlp-100, mlp-1000, cnn-100, cnn-1000 (NAME-DEVICES): Fashion-MNIST, IID, every device every
round, 1 local epoch, batch 32, SGD lr 0.05, seed 0, 2 Ray hosts; one run on each runtime. Both
start from the .tflite's initial weights (--init-from; the ExecuTorch run's mapped to its program by
fedsim.model.torch_models.from_keras), and the seed fixes the shards and every device's shuffles, so
the two runs see the same batches in the same order. The CNN rows run fewer rounds: ExecuTorch's
portable convolution kernels take ~70 ms a step here (TFLite ~6 ms).

Per run:
- final_accuracy, and per row the two runtimes' difference (target for the MLP: within 1 point);
- step_ms: the train step's latency, from the run's artifact.json (median of 20 calls, batch 32, one thread);
- round_s: median over rounds 2..R of the round's wall time less its evaluation (wall_s - evaluate_s);
- floor_s: median over rounds 2..R of the busiest host's summed device train_s (each device's
  restore, train steps and save: the devices' own work in their runtime);
- ratio: median over rounds 2..R of round_s / floor_s (target for ExecuTorch at 1,000 devices:
  at most 1.3x).
Writes results/workloads/runtimes.{md,csv} (one row per run), runtimes_rounds.csv (every round of
every run) and runtimes.png (the accuracy curves).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import fedsim
from fedsim.checkpoint import read_checkpoint, unpack, write_checkpoint
from fedsim.core.task import Task
from fedsim.device import open_runner
from fedsim.model import MODELS, cache
from fedsim.model.builders import ArtifactRecipe
from fedsim.model.torch_models import from_keras
from fedsim.report.tables import publish

ROWS = {"mlp-100": 20, "mlp-1000": 10, "cnn-100": 3, "cnn-1000": 3}  # row -> rounds
ACCURACY_POINTS = 1.0  # the MLP's two runs end within this many points of test accuracy
RATIO = 1.3  # an ExecuTorch round at 1,000 devices: at most this times its devices' own work
TASK = Task((28, 28), "image", 10)  # Fashion-MNIST


def initial_weights(model: str, folder: Path) -> dict[str, Path]:
    """The .tflite's initial checkpoint, as each runtime's model names and lays it out."""
    runner = open_runner(cache.build(ArtifactRecipe(MODELS[model], TASK, seed=0)))
    keras = unpack(read_checkpoint(runner.initial_checkpoint(folder)), runner.layout)
    paths = {"tflite": folder / f"{model}-tflite.ckpt", "executorch": folder / f"{model}-executorch.ckpt"}
    paths["tflite"].write_bytes(write_checkpoint(keras))
    paths["executorch"].write_bytes(write_checkpoint(from_keras(keras, TASK)))
    return paths


def measure(run: fedsim.Run) -> dict[str, float]:
    rounds = run.rounds[run.rounds["round"] >= 2]
    floor = run.devices.groupby(["round", "host"])["train_s"].sum().groupby("round").max()
    round_s = (rounds["wall_s"] - rounds["evaluate_s"].fillna(0)).to_numpy()
    floor_s = floor.reindex(rounds["round"]).to_numpy()
    return {
        "final_accuracy": round(run.final_accuracy, 4),
        "step_ms": round(float(run.artifact["latency_ms"]["train"]), 3),
        "round_s": round(float(np.median(round_s)), 3),
        "floor_s": round(float(np.median(floor_s)), 3),
        "ratio": round(float(np.median(round_s / floor_s)), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of every row (default: each row's own)")
    parser.add_argument("--out", default="results/workloads")
    args = parser.parse_args()
    rows, curves = [], []
    root = Path(tempfile.mkdtemp(prefix="fedsim-runtimes-"))
    try:
        for row in args.rows.split(","):
            model, devices = row.split("-")[0], int(row.split("-")[1])
            rounds = args.rounds or ROWS[row]
            starts = initial_weights(model, root)
            for runtime in ("tflite", "executorch"):
                run = fedsim.run(
                    out=str(root / f"{row}-{runtime}"),
                    devices=devices,
                    rounds=rounds,
                    model=model,
                    runtime=runtime,
                    init_from=str(starts[runtime]),
                    seed=0,
                    hosts=2,
                    progress=False,
                )
                fedsim.release()
                rows.append({"row": row, "runtime": runtime, "devices": devices, "rounds": rounds, **measure(run)})
                print(rows[-1], flush=True)
                curve = run.rounds[["round", "test_accuracy", "wall_s", "evaluate_s"]].assign(row=row, runtime=runtime)
                curves.append(curve)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = pd.DataFrame(rows)
    summary = []
    for row, part in table.groupby("row", sort=False):
        acc = part.set_index("runtime")["final_accuracy"]
        gap = 100 * abs(acc["tflite"] - acc["executorch"])
        et = part[part["runtime"] == "executorch"].iloc[0]
        line = f"{row}: accuracy TFLite {acc['tflite']:.4f}, ExecuTorch {acc['executorch']:.4f} ({gap:.2f} points"
        if row.startswith("mlp"):
            line += f"; target within {ACCURACY_POINTS:g}: {'met' if gap <= ACCURACY_POINTS else 'NOT met'}"
        line += f"); ExecuTorch round {et['ratio']:.2f}x its devices' own work"
        if et["devices"] >= 1000:
            line += f" (target at most {RATIO:g}x: {'met' if et['ratio'] <= RATIO else 'NOT met'})"
        summary.append(line + ".")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    header = (
        f"TFLite and ExecuTorch side by side, {dt.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, commit "
        f"{commit}, `python experiments/runtimes.py --rows {args.rows}"
        + (f" --rounds {args.rounds}" if args.rounds else "")
        + "`: Fashion-MNIST IID, every device every round, 1 local epoch, batch 32, SGD lr 0.05, seed 0, Ray with "
        "2 hosts; both runtimes from the .tflite's initial weights.\n\n" + "\n".join(f"- {s}" for s in summary)
    )
    footer = (
        "step_ms: the train step (batch 32, one thread) from artifact.json; round_s: median over rounds 2..R of "
        "wall_s - evaluate_s; floor_s: median of the busiest host's summed device train_s (restore, train steps, "
        "save); ratio: median of round_s / floor_s."
    )
    all_rounds = pd.concat(curves, ignore_index=True)
    figure, axes = plt.subplots(1, len(table["row"].unique()), figsize=(4 * len(table["row"].unique()), 3.2))
    for ax, (row, part) in zip(np.atleast_1d(axes), all_rounds.groupby("row", sort=False)):
        for runtime, line in part.groupby("runtime"):
            ax.plot(line["round"], line["test_accuracy"], marker="o", ms=3, label=runtime)
        ax.set_title(row)
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.legend()
    figure.tight_layout()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    all_rounds.to_csv(Path(args.out) / "runtimes_rounds.csv", index=False)
    publish(table, args.out, "runtimes", header, footer, figure)


if __name__ == "__main__":
    main()
