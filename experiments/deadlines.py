"""Stragglers on the simulated clock: waiting for every device, a deadline (drop / partial), over-selection.

    python experiments/deadlines.py [--rounds R] [--deadline S] [--hours H]

Fashion-MNIST, 1000 devices with the `skewed` profile set (phones with a slow tail: 20% of devices
ten times slower in compute and uplink; see fedsim/clock/profiles.py for what its numbers rest on), 100
selected per round, 2 local epochs, the seed MLP, seed 0, the latency table measured at the start of
the first run and pinned for the others (so the four runs share one clock). Four policies:
  sync         every selected device, the round ends at the slowest
  deadline     --deadline S --straggler drop: later devices are discarded
  partial      --deadline S --straggler partial: later devices keep the steps done by S
  overselect   --over-select 1.3: 130 selected, the first 100 to finish kept
Prints and saves a table of simulated hours to 0.75 and 0.80 test accuracy and the accuracy after H
simulated hours (deadlines.md / .csv under results/workloads/) and the plot of accuracy against
simulated hours (deadlines.png). Runs go to results/deadlines/<stamp>/.
"""

import argparse
import json
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

import fedsim
from fedsim.report.analysis import accuracy_at, hours_to
from fedsim.report.tables import publish

BASE = dict(devices=1000, per_round=100, local_epochs=2, fleet="skewed", seed=0, name="deadlines", progress=False)
OUT = Path("results/workloads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--deadline", type=float, default=10.0, help="simulated seconds (deadline and partial)")
    parser.add_argument("--hours", type=float, default=1.0, help="report the accuracy after this many simulated hours")
    args = parser.parse_args()
    root = Path(f"results/deadlines/{datetime.now():%Y%m%d-%H%M%S}")
    policies = {
        "sync": {},
        "deadline": {"deadline": args.deadline, "straggler": "drop"},
        "partial": {"deadline": args.deadline, "straggler": "partial"},
        "overselect": {"over_select": 1.3},
    }
    rows, curves, latency = [], {}, None
    for label, policy in policies.items():
        pinned = {"latency": str(latency)} if latency else {}
        run = fedsim.run(rounds=args.rounds, out=str(root / label), **BASE, **policy, **pinned)
        if latency is None:  # one clock for all four: the first run's measured latencies
            latency = root / "latency.json"
            latency.write_text(json.dumps(run.meta["sim_latency_ms"]))
        r = run.rounds
        curves[label] = r
        statuses = run.devices["status"].value_counts()
        rows.append(
            {
                "policy": label,
                "settings": ", ".join(f"{k}={v}" for k, v in policy.items()) or "wait for every device",
                "h_to_0.75": round(hours_to(r, 0.75), 3),
                "h_to_0.80": round(hours_to(r, 0.80), 3),
                f"acc_after_{args.hours:g}h": round(accuracy_at(r, args.hours), 4),
                "final_accuracy": round(float(r["test_accuracy"].iloc[-1]), 4),
                "sim_hours": round(float(r["sim_elapsed_s"].iloc[-1]) / 3600, 3),
                "median_round_sim_s": round(float(r["sim_round_s"].median()), 2),
                "kept_per_round": round(float(r["devices_accepted"].mean()), 1),
                "stragglers": int(statuses.get("straggler", 0)),
                "dropped": int(statuses.get("dropped", 0)),
                "wall_s_per_round": round(float(r["wall_s"].median()), 3),
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    latencies = json.loads(latency.read_text())
    header = (
        f"Fashion-MNIST, 1000 devices (`skewed` profiles), 100 per round, 2 local epochs, MLP, seed 0, "
        f"{args.rounds} rounds; latency table (ms, one thread, this machine): {latencies}; "
        f"`python experiments/deadlines.py` (runs in {root})"
    )
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, r in curves.items():
        ax.plot(r["sim_elapsed_s"] / 3600, r["test_accuracy"], label=label)
    for y in (0.75, 0.8):
        ax.axhline(y, color="grey", lw=0.6, ls=":")
    ax.set(
        xlabel="simulated hours",
        ylabel="test accuracy",
        ylim=(0.5, 0.9),
        xlim=(0, None),
        title="1000 skewed phones, 100 per round: accuracy against simulated time",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    publish(table, OUT, "deadlines", header, figure=fig)
    print(f"runs in {root}")


if __name__ == "__main__":
    main()
