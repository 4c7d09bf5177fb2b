"""What compressing the uplink buys on the simulated clock: accuracy against uplink megabytes and
against simulated hours, for none / bf16 / q8 / q4 / q2 (and q2 after a Hadamard rotation) / top-1%
with error feedback.

    python experiments/communication.py [--rounds R]

Fashion-MNIST, 1000 devices with the `phones` profiles (5 Mbit/s median uplink; see
fedsim/clock/profiles.py), 100 selected per round, 2 local epochs, the seed MLP, seed 0; the latency
table measured at the start of the first run and pinned for the others, so every method runs on the
same clock. The bytes are each device's encoded payload (fedsim/pipeline/codecs.py), and they set
the upload's simulated seconds and energy. Prints and saves communication.md / .csv and
communication.png under results/workloads/; runs go to results/communication/<stamp>/.
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

BASE = dict(devices=1000, per_round=100, local_epochs=2, fleet="phones", seed=0, name="communication", progress=False)
METHODS = {
    "none": {},
    "bf16": {"compress": "bf16"},
    "q8": {"compress": "q8"},
    "q4": {"compress": "q4"},
    "q2": {"compress": "q2"},
    "q2 rotated": {"compress": "q2", "rotate": True},
    "top-1% + EF": {"compress": "topk:0.01"},
}
OUT = Path("results/workloads")
TARGETS = (0.75, 0.80)


def uplink_mb_to(rounds: pd.DataFrame, target: float) -> float:
    """Megabytes all devices sent until the first evaluated round at or above `target`."""
    hit = np.flatnonzero((rounds["test_accuracy"] >= target).to_numpy())
    return float(rounds["bytes_up"].iloc[: hit[0] + 1].sum() / 1e6) if len(hit) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=150)
    args = parser.parse_args()
    root = Path(f"results/communication/{datetime.now():%Y%m%d-%H%M%S}")
    rows, curves, latency = [], {}, None
    for label, method in METHODS.items():
        pinned = {"latency": str(latency)} if latency else {}
        run = fedsim.run(rounds=args.rounds, out=str(root / label.replace(" ", "_")), **BASE, **method, **pinned)
        if latency is None:  # one clock for all: the first run's measured latencies
            latency = root / "latency.json"
            latency.write_text(json.dumps(run.meta["sim_latency_ms"]))
        r = run.rounds
        curves[label] = r
        ok = run.devices[run.devices["status"] == "ok"]
        row = {
            "method": label,
            "kb_per_upload": round(float(ok["checkpoint_bytes"].median()) / 1024, 1),
            "final_accuracy": round(float(r["test_accuracy"].iloc[-1]), 4),
        }
        for t in TARGETS:
            row[f"h_to_{t:.2f}"] = round(hours_to(r, t), 3)
            row[f"uplink_mb_to_{t:.2f}"] = round(uplink_mb_to(r, t), 1)
            row[f"kj_to_{t:.2f}"] = round(kj_to(r, t), 1)
        row["median_round_sim_s"] = round(float(r["sim_round_s"].median()), 2)
        row["wall_s_per_round"] = round(float(r["wall_s"].median()), 3)
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    header = (
        f"Fashion-MNIST, 1000 devices (`phones` profiles), 100 per round, 2 local epochs, MLP, seed 0, "
        f"{args.rounds} rounds; latency table (ms, one thread, this machine): "
        f"{json.loads(latency.read_text()) if latency else {}}; `python experiments/communication.py` "
        f"(runs in {root}). kb_per_upload: a device's encoded update; uplink_mb_to_X: what every device "
        "sent until the first evaluation at or above X; kj_to_X: the phones' energy until then."
    )
    fig, (by_bytes, by_time) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for label, r in curves.items():
        by_bytes.plot(r["bytes_up"].cumsum() / 1e6, r["test_accuracy"], label=label)
        by_time.plot(r["sim_elapsed_s"] / 3600, r["test_accuracy"], label=label)
    for ax in (by_bytes, by_time):
        for y in TARGETS:
            ax.axhline(y, color="grey", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
    by_bytes.set(xscale="log", xlabel="uplink megabytes, all devices (log)", ylabel="test accuracy", ylim=(0.5, 0.9))
    by_time.set(xlabel="simulated hours", xlim=(0, None))
    by_bytes.legend(fontsize="small")
    fig.suptitle("1000 phones, 100 per round: what each uplink encoding costs in bytes and in time")
    fig.tight_layout()
    publish(table, OUT, "communication", header, figure=fig)
    print(f"runs in {root}")


if __name__ == "__main__":
    main()
