"""Personalised federated learning on PFLlib's Fashion-MNIST protocol, beside PFLlib's published table.

    python experiments/personalisation.py [--rounds R] [--eval-every E] [--only fedavg,fedper,...]

PFLlib (Zhang et al., "PFLlib: A Beginner-Friendly and Comprehensive Personalized Federated Learning
Library", JMLR 2025) publishes, for Fashion-MNIST with 20 clients all taking part every round, each
client's data split 75/25 into train and test, batch 10, SGD at lr 0.005, 1 local epoch, 2000 rounds,
its 4-layer CNN (FedAvgCNN): the best accuracy over the rounds on the clients' own test data (correct
over all clients' test samples). This script runs the same protocol on the artifact, for the
pathological partition (2 labels a device) and Dirichlet(0.1): FedAvg (its global model), FedAvg with
one epoch of local fine-tuning (--personal-eval-epochs 1), FedPer and FedRep (the head personal),
Ditto (lambda 0.1) and local training only. Differences from PFLlib, stated in the table's notes:
the model (fedsim's MLP, the guide's), the rounds (--rounds, default 100, not 2000), the data (the 60,000
training images partitioned and each device's share split 75/25, where PFLlib partitions all 70,000).

Prints and saves results/workloads/personalisation.{md,csv,png} (the PNG: each device's personalised
accuracy, per method and partition); the runs go to results/personalisation/<stamp>/.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import fedsim
from fedsim.report.tables import publish

PROTOCOL = dict(  # PFLlib's defaults (system/main.py) and its Fashion-MNIST generation (75/25 per client)
    devices=20,
    per_round=20,
    batch_size=10,
    lr=0.005,
    device_optimizer="sgd",
    local_epochs=1,
    device_test_fraction=0.25,
    seed=0,
)
PARTITIONS = {"pathological": "classes:2", "dir0.1": "dirichlet:0.1"}
METHODS = {  # label -> settings
    "FedAvg": dict(strategy="fedavg"),
    "FedAvg + FT": dict(strategy="fedavg", personal_eval_epochs=1),
    "FedPer": dict(strategy="fedper"),
    "FedRep": dict(strategy="fedrep", head_epochs=1),
    "Ditto": dict(strategy="ditto", ditto_lambda=0.1),
    "Local": dict(strategy="local"),
}
# PFLlib's README table (accuracy %, pathological / Dir(0.1), 20 clients, FedAvgCNN)
PFLLIB = {
    "FedAvg": (80.41, 85.85),
    "FedProx": (78.08, 85.63),
    "Ditto": (99.44, 97.47),
    "FedPer": (99.47, 97.44),
    "FedRep": (99.56, 97.56),
}
OUT = Path("results/workloads")


def accuracies(run: fedsim.Run, personal: bool) -> pd.Series:
    """Per evaluated round: correct over all devices' test samples (PFLlib's accuracy), of each device's
    personal model (personal) or of the global model."""
    sizes = run.partition.set_index("device_id")["test_samples"]
    column = "personal_accuracy" if personal else "test_accuracy"
    rows = run.devices.dropna(subset=[column])
    rows = rows.assign(right=rows[column] * rows["device_id"].map(sizes), n=rows["device_id"].map(sizes))
    by = rows.groupby("round")
    return by["right"].sum() / by["n"].sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--only", default=None, help="methods, comma-separated (default: all)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument(
        "--stamp", default=None, help="continue the batch results/personalisation/STAMP (finished runs are read back)"
    )
    args = parser.parse_args()
    methods = {k: v for k, v in METHODS.items() if args.only is None or k in args.only.split(",")}
    stamp = args.stamp or datetime.now().strftime("%Y%m%d-%H%M%S")
    rows, spreads = [], []
    for part, spec in PARTITIONS.items():
        for label, settings in methods.items():
            folder = Path(f"results/personalisation/{stamp}/{part}-{label.replace(' + ', '-').lower()}")
            if (folder / "rounds.parquet").exists():  # an earlier invocation of this batch: finish or read it
                run = fedsim.load_run(folder)
                if len(run.rounds) < args.rounds:
                    run = fedsim.resume(folder, rounds=args.rounds)
            else:
                run = fedsim.run(
                    out=str(folder),
                    rounds=args.rounds,
                    eval_every=args.eval_every,
                    partition=spec,
                    **PROTOCOL,
                    **settings,
                )
            personal = "personal_acc_mean" in run.rounds
            acc = accuracies(run, personal)
            last = run.devices[run.devices["round"] == acc.index.max()]
            spreads += [
                {"partition": part, "method": label, "accuracy": a}
                for a in last["personal_accuracy" if personal else "test_accuracy"].dropna()
            ]
            published = PFLLIB.get(label)
            best = 100 * float(acc.max())
            rows.append(
                {
                    "partition": part,
                    "method": label,
                    "scores": "personal models" if personal else "the global model",
                    "best_%": round(best, 2),
                    "final_%": round(100 * float(acc.iloc[-1]), 2),
                    "PFLlib_%": published[0 if part == "pathological" else 1] if published else np.nan,
                    "difference": round(best - published[0 if part == "pathological" else 1], 2)
                    if published
                    else np.nan,
                    "device_p10_%": round(100 * float(np.percentile([s["accuracy"] for s in spreads[-20:]], 10)), 2),
                    "rounds": args.rounds,
                    "minutes": round(float(run.rounds["wall_s"].sum()) / 60, 1),
                    "mb_up_per_device_round": round(
                        float(run.rounds["bytes_up"].median()) / PROTOCOL["devices"] / 1e6, 3
                    ),
                    "run": str(run.path),
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    figure, axes = plt.subplots(1, len(PARTITIONS), figsize=(12, 4), sharey=True)
    spread = pd.DataFrame(spreads)
    for ax, part in zip(np.atleast_1d(axes), PARTITIONS):
        mine = spread[spread["partition"] == part]
        labels = [m for m in methods if m in set(mine["method"])]
        ax.boxplot([mine.loc[mine["method"] == m, "accuracy"] for m in labels], tick_labels=labels, showmeans=True)
        ax.set_title(f"{part}: each device's accuracy after round {args.rounds}")
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("accuracy on the device's own test data")
    figure.tight_layout()
    header = (
        f"# Personalisation on PFLlib's Fashion-MNIST protocol\n\n"
        f"`python experiments/personalisation.py --rounds {args.rounds} --eval-every {args.eval_every}` "
        f"({stamp}). 20 devices, all every round, each device's data 75/25 train/test, batch 10, SGD lr 0.005, "
        "1 local epoch; accuracy = correct over all devices' test samples (PFLlib's), best over the evaluated "
        "rounds (PFLlib's) and final; `scores` says which model: FedAvg's global model, or each device's "
        "personal model (FedAvg + FT: the global model after 1 epoch of fine-tuning on the device)."
    )
    footer = (
        "Differences from PFLlib's protocol: fedsim's MLP (the guide's model: 784-128-10) where PFLlib uses its "
        f"FedAvgCNN (conv 32, conv 64, fc 512); {args.rounds} rounds, not 2000; the 60,000 training images "
        "partitioned, each device's share split 75/25 (PFLlib partitions all 70,000 images); Ditto's lambda 0.1 "
        "(PFLlib's default mu is 0); PFLlib's pathological partition gives each class to 4 clients in turn, "
        "fedsim's classes:2 draws each device's 2 labels. PFLlib's FedProx row is not run here "
        "(`--strategy fedprox` is fedsim's; it is not a personalised method)."
    )
    publish(table.drop(columns=["run"]), args.out, "personalisation", header, footer, figure, csv=table)


if __name__ == "__main__":
    main()
