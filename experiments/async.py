"""Synchronous FedAvg against FedBuff (--mode async) on the same phones: simulated hours and energy
to 0.75 and 0.80 test accuracy.

    python experiments/async.py [--rounds R] [--steps S] [--buffer K]

Fashion-MNIST, 1000 devices with the `skewed` profiles (phones with a slow tail: 20% of devices ten
times slower in compute and uplink; fedsim/clock/profiles.py), 2 local epochs, the seed MLP, seed 0,
one latency table for both (measured at the start of the first run, then pinned).
  sync     100 devices a round; the round waits for the slowest
  fedbuff  100 devices training at once (--concurrency 100); the server steps every K arrivals
           (--buffer, FedBuff's K = 10), staleness weight 1/sqrt(1 + s) (FedBuff's), the same
           sample-weighted mean as sync
Prints and saves async.md / .csv and async.png under results/workloads/ with the ratio of
simulated hours beside the published ones (FedBuff: ~3x to target, Nguyen et al. 2022; FedScale's
comparison, FEMNIST / ResNet-18: 27,618 s sync against 18,913 s async, 1.46x) - other tasks, models
and device traces, so the comparison is of orders, not of numbers. Runs go to results/async/<stamp>/.
"""

import argparse
import json
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import fedsim
from fedsim.report.analysis import hours_to, kj_to
from fedsim.report.tables import publish

BASE = dict(devices=1000, local_epochs=2, fleet="skewed", seed=0, name="async", progress=False)
OUT = Path("results/workloads")
TARGETS = (0.75, 0.80)
PUBLISHED = {"FedBuff (Nguyen et al. 2022)": 3.0, "FedScale (FEMNIST, ResNet-18)": 27618 / 18913}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150, help="synchronous rounds")
    parser.add_argument("--steps", type=int, default=3000, help="FedBuff server steps")
    parser.add_argument("--buffer", type=int, default=10, help="FedBuff's K")
    args = parser.parse_args()
    root = Path(f"results/async/{datetime.now():%Y%m%d-%H%M%S}")
    runs = {
        "sync": dict(per_round=100, rounds=args.rounds),
        "fedbuff": dict(
            mode="async",
            concurrency=100,
            buffer=args.buffer,
            staleness="poly:0.5",
            rounds=args.steps,
            eval_every=max(1, args.steps // 150),
        ),
    }
    rows, curves, latency = [], {}, None
    for label, settings in runs.items():
        pinned = {"latency": str(latency)} if latency else {}
        run = fedsim.run(out=str(root / label), **BASE, **settings, **pinned)
        if latency is None:
            latency = root / "latency.json"
            latency.write_text(json.dumps(run.meta["sim_latency_ms"]))
        r = run.rounds
        curves[label] = r
        statuses = run.devices["status"].value_counts()
        scored = r.dropna(subset=["test_accuracy"])
        row = {
            "schedule": label,
            "server_steps": len(r),
            "updates_applied": int(r["devices_accepted"].sum()),
            "final_accuracy": round(float(scored["test_accuracy"].iloc[-1]), 4),
            "sim_hours": round(float(r["sim_elapsed_s"].iloc[-1]) / 3600, 3),
        }
        for t in TARGETS:
            row[f"h_to_{t:.2f}"] = round(hours_to(scored, t), 3)
            row[f"kj_to_{t:.2f}"] = round(kj_to(r, t), 1)
        row["mean_staleness"] = round(float(run.devices["staleness"].mean()), 2) if "staleness" in run.devices else 0.0
        row["dropped"] = int(statuses.get("dropped", 0))
        row["wall_s"] = round(float(r["wall_s"].sum()), 1)
        row["wall_ms_per_update"] = round(1000 * float(r["wall_s"].sum()) / max(row["updates_applied"], 1), 2)
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows).set_index("schedule")
    ratios = {
        f"h_to_{t:.2f}": table.loc["sync", f"h_to_{t:.2f}"] / table.loc["fedbuff", f"h_to_{t:.2f}"] for t in TARGETS
    }
    energy = {
        f"kj_to_{t:.2f}": table.loc["sync", f"kj_to_{t:.2f}"] / table.loc["fedbuff", f"kj_to_{t:.2f}"] for t in TARGETS
    }
    fig, (by_time, by_energy) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for label, r in curves.items():
        scored = r["test_accuracy"].notna()
        by_time.plot(r["sim_elapsed_s"][scored] / 3600, r["test_accuracy"][scored], label=label)
        by_energy.plot((r["sim_energy_j"].cumsum() / 1e6)[scored], r["test_accuracy"][scored], label=label)
    for ax in (by_time, by_energy):
        for y in TARGETS:
            ax.axhline(y, color="grey", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
    by_time.set(xlabel="simulated hours", ylabel="test accuracy", ylim=(0.5, 0.9), xlim=(0, None))
    by_energy.set(xlabel="the phones' energy, MJ", xlim=(0, None))
    by_time.legend()
    fig.suptitle("1000 skewed phones, 100 at a time: synchronous rounds against FedBuff")
    fig.tight_layout()
    header = (
        f"Fashion-MNIST, 1000 devices (`skewed` profiles), 2 local epochs, MLP, seed 0; sync: 100 a round, "
        f"{args.rounds} rounds; FedBuff: concurrency 100, buffer {args.buffer}, staleness poly:0.5, "
        f"{args.steps} server steps; latency table (ms, one thread, this machine): "
        f"{json.loads(latency.read_text()) if latency else {}}; `python experiments/async.py` (runs in {root})"
    )
    footer = [
        "Sync over FedBuff (how many times faster FedBuff reaches each target; energy: how many times less):",
        "",
        "| target | simulated hours | energy |",
        "|:--|--:|--:|",
        *(f"| {t:.2f} | {ratios[f'h_to_{t:.2f}']:.2f}x | {energy[f'kj_to_{t:.2f}']:.2f}x |" for t in TARGETS),
        "",
        "Published (other tasks, models and device traces: orders to compare, not numbers): "
        + "; ".join(f"{k}: {v:.2f}x" for k, v in PUBLISHED.items())
        + ".",
    ]
    publish(table, OUT, "async", header, "\n".join(footer), fig, index=True)
    print(f"runs in {root}; ratios {ratios} {np.round(list(energy.values()), 2)}")


if __name__ == "__main__":
    main()
