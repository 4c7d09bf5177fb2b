"""fedsim against pfl-research 0.6 on the anchor protocol, side by side in one run.

    python experiments/bench_peers.py --pfl-python .venv-pfl/bin/python [--sizes 10,100,1000] [--rounds 6] [--passes 2]

The peer runs from its own environment (see experiments/peers/pfl_anchor.py for its setup and its
half of the protocol); fedsim runs from this one. The protocol: Fashion-MNIST IID in equal shards,
every device every round, 1 local epoch, batch 32, SGD lr 0.05, FedAvg, the seed MLP, the global model
evaluated on the 10,000 test images after every round, 2 workers (pfl's worker processes, fedsim's Ray
hosts). Each pass runs every size on both, alternating which goes first, each in a fresh process.

Per run: round_s is the median wall time of rounds 2..R (fedsim: differences of the rounds table's
elapsed_s; pfl: between its callbacks after each central iteration, evaluation included on both);
to_round_1_s is from the process's launch to the start of round 1 (imports, Ray or pfl's workers,
data, model; pfl's evaluation of the initial model, which fedsim does not make, left out).
The summary takes medians over passes; speedup = pfl's round_s / fedsim's, target 2.5 at every size.
Writes results/bench/peers.csv (every run) and peers.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.report.tables import publish

TARGET_SPEEDUP = 2.5
PEER = Path(__file__).parent / "peers" / "pfl_anchor.py"

FEDSIM_CHILD = """
import json, sys, time
launched = float(sys.argv[3])
began = time.time()
import fedsim
imported = time.time()
run = fedsim.run(devices=int(sys.argv[1]), rounds=int(sys.argv[2]), hosts=2, out=sys.argv[4], progress=False)
r = run.rounds
first = r.iloc[0]
print("RESULT" + json.dumps({
    "peer": "fedsim", "devices": int(sys.argv[1]), "workers": 2,
    "import_s": imported - began,
    "setup_s": float(first["elapsed_s"] - first["wall_s"]),
    "to_round_1_s": imported - launched + float(first["elapsed_s"] - first["wall_s"]),
    "round_s": [float(first["wall_s"])] + r["elapsed_s"].diff().dropna().tolist(),
    "accuracy": float(r["test_accuracy"].iloc[-1]),
}))
"""


def _result(proc: subprocess.CompletedProcess[str], what: str) -> dict:
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT") or x.startswith("{")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{what} failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("RESULT"))


def run_fedsim(devices: int, rounds: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        launched = time.time()
        cmd = [sys.executable, "-c", FEDSIM_CHILD, str(devices), str(rounds), repr(launched), f"{tmp}/run"]
        return _result(subprocess.run(cmd, capture_output=True, text=True, timeout=1800), "fedsim")


def run_pfl(python: str, devices: int, rounds: int) -> dict:
    cmd = [python, str(PEER), "--devices", str(devices), "--rounds", str(rounds)]
    return _result(subprocess.run(cmd, capture_output=True, text=True, timeout=1800), "pfl-research")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pfl-python", default=".venv-pfl/bin/python", help="the peer's environment's python")
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    if not Path(args.pfl_python).exists():
        raise SystemExit(f"--pfl-python {args.pfl_python} does not exist: make the peer's environment first ({PEER})")
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for p in range(args.passes):
        for devices in sizes:
            order = ("fedsim", "pfl") if p % 2 == 0 else ("pfl", "fedsim")
            for who in order:
                r = (
                    run_fedsim(devices, args.rounds)
                    if who == "fedsim"
                    else run_pfl(args.pfl_python, devices, args.rounds)
                )
                rounds = r.pop("round_s")
                r.update(
                    peer=r["peer"],
                    pass_=p,
                    round_s=float(np.median(rounds[1:])),
                    first_round_s=rounds[0],
                    rounds=len(rounds),
                )
                rows.append(r)
                print(
                    f"pass {p} {r['peer']:>12} {devices:>5} devices: round {r['round_s']:.3f} s, "
                    f"to round 1 {r['to_round_1_s']:.2f} s, accuracy {r['accuracy']:.4f}",
                    flush=True,
                )
    table = pd.DataFrame(rows).rename(columns={"pass_": "pass"})
    med = table.groupby(["devices", "peer"])[["round_s", "to_round_1_s", "import_s", "setup_s", "accuracy"]].median()
    summary = med["round_s"].unstack("peer").rename(columns=lambda c: f"{c}_round_s")
    start = med["to_round_1_s"].unstack("peer").rename(columns=lambda c: f"{c}_to_round_1_s")
    acc = med["accuracy"].unstack("peer").rename(columns=lambda c: f"{c}_accuracy")
    summary = summary.join(start).join(acc)
    summary["speedup"] = summary["pfl-research_round_s"] / summary["fedsim_round_s"]
    summary["target"] = TARGET_SPEEDUP
    summary["met"] = summary["speedup"] >= TARGET_SPEEDUP
    header = (
        f"fedsim against pfl-research 0.6, {datetime.now():%Y-%m-%d %H:%M}, anchor protocol (Fashion-MNIST IID, "
        f"all devices every round, 1 epoch, batch 32, SGD 0.05, the seed MLP, test-set evaluation every round, "
        f"2 workers), medians of rounds 2..{args.rounds} then of {args.passes} alternating passes; "
        f"`python experiments/bench_peers.py --rounds {args.rounds} --passes {args.passes}`"
    )
    footer = "Every run:\n\n" + table.round(4).to_markdown(index=False)
    publish(summary.round(4), args.out, "peers", header, footer, index=True, csv=table)


if __name__ == "__main__":
    main()
