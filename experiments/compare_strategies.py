"""Every strategy on one non-IID fleet, then the robust ones under attack.

    python experiments/compare_strategies.py [--rounds R] [--only NAME,...]

Fashion-MNIST, 100 devices, dirichlet 0.3, the seed MLP, the same seed for every run: one run per
strategy, then FedAvg and the robust strategies with 20% of the devices attacking (signflip: each
uploads its update reversed and scaled by 4; ALIE: mean - z * std of the honest updates). Prints and
saves one table of final and best test accuracy per run (compare_strategies.md / .csv, quoted in
the README) and a plot of test accuracy per round (compare_strategies.png), under results/workloads/.
The runs themselves go to results/compare_strategies/<stamp>/ (fedsim.load_runs reads them).
"""

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

import fedsim
from fedsim.report.tables import publish

# ---- settings ---------------------------------------------------------------------------------
DEVICES, PARTITION, SEED = 100, "dirichlet:0.3", 0
STRATEGIES = {  # name -> its settings (the defaults unless tuned here; each row of the table says which)
    "fedavg": {},
    "fedavgm": {"server_lr": 1.0, "server_momentum": 0.5},
    "fedadam": {"server_lr": 0.003},
    "fedyogi": {"server_lr": 0.003},
    "fedadagrad": {"server_lr": 0.003},
    "qfedavg": {"q": 0.2},
    "fedprox": {"mu": 0.01},
    "scaffold": {},
    "fedmedian": {},
    "trimmedmean": {"trim": 0.2},
    "krum": {},
    "multikrum": {},
    "bulyan": {},
}
ROBUST = ["fedavg", "fedmedian", "trimmedmean", "krum", "multikrum", "bulyan"]
ATTACKS = [("signflip", 0.2), ("alie", 0.2)]
OUT = Path("results/workloads")


def row_of(label: str, name: str, settings: dict, attack: str | None, share: float, run: fedsim.Run) -> dict:
    acc = run.rounds.set_index("round")["test_accuracy"]
    honest = run.devices[run.devices["role"] == "honest"]
    return {
        "run": label,
        "strategy": name,
        "attack": attack or "",
        "byzantine": share,
        "settings": ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults",
        "final_accuracy": round(float(acc.iloc[-1]), 4),
        "best_accuracy": round(float(acc.max()), 4),
        "best_round": int(acc.idxmax()),
        "rounds": int(acc.index.max()),
        "honest_train_loss": round(float(honest["train_loss"].mean()), 4),
        "s_per_round": round(float(run.rounds["wall_s"].median()), 3),
        "folder": str(run.path),
    }


def plot(curves: dict[str, pd.Series]) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    colours = plt.cm.tab20.colors
    for i, (label, acc) in enumerate(curves.items()):
        ax = axes[1] if "+" in label else axes[0]
        ax.plot(
            acc.index,
            acc.values,
            label=label,
            lw=1.2,
            color=colours[i % len(colours)],
            ls="--" if label.endswith("+alie") else "-",
        )
    for ax, title in zip(axes, ("every strategy, no attack", "20% attackers (solid: signflip, dashed: ALIE)")):
        ax.set(title=title, xlabel="round", ylim=(0, 1))
        ax.axhline(0.8, color="grey", lw=0.6, ls=":")
        ax.legend(fontsize=7, ncol=3, loc="lower right")
    axes[0].set_ylabel("test accuracy")
    fig.suptitle(f"Fashion-MNIST, {DEVICES} devices, {PARTITION}")
    fig.tight_layout()
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--only", default="", help="comma-separated run names (default: all)")
    parser.add_argument("--from", dest="source", help="a folder of this script's runs: tabulate and plot them again")
    args = parser.parse_args()
    root = Path(args.source) if args.source else Path(f"results/compare_strategies/{datetime.now():%Y%m%d-%H%M%S}")
    plan = [(name, name, settings, None, 0.0) for name, settings in STRATEGIES.items()]
    plan += [
        (f"{name}+{attack}", name, STRATEGIES[name], attack, share) for attack, share in ATTACKS for name in ROBUST
    ]
    only = set(filter(None, args.only.split(",")))
    rows, curves = [], {}
    for label, name, settings, attack, share in plan:
        if only and label not in only:
            continue
        folder = root / label.replace("+", "-")
        if args.source:
            run = fedsim.load_run(folder)
        else:
            extra = {"attack": attack, "byzantine": share} if attack else {}
            run = fedsim.run(
                devices=DEVICES,
                partition=PARTITION,
                seed=SEED,
                rounds=args.rounds,
                strategy=name,
                out=str(folder),
                name="compare_strategies",
                progress=False,
                **settings,
                **extra,
            )
        curves[label] = run.rounds.set_index("round")["test_accuracy"]
        rows.append(row_of(label, name, settings, attack, share, run))
        print(f"{label:24s} final {rows[-1]['final_accuracy']:.4f} best {rows[-1]['best_accuracy']:.4f}", flush=True)
    table = pd.DataFrame(rows)
    rounds = int(table["rounds"].max())
    suffix = "" if not only else "_partial"
    shown = table[["run", "settings", "final_accuracy", "best_accuracy", "best_round", "s_per_round"]]
    header = (
        f"Fashion-MNIST, {DEVICES} devices, {PARTITION}, MLP, seed {SEED}, {rounds} rounds; "
        f"`python experiments/compare_strategies.py` (runs in {root})"
    )
    publish(shown, OUT, f"compare_strategies{suffix}", header, figure=plot(curves), csv=table)
    print(f"runs in {root}")


if __name__ == "__main__":
    main()
