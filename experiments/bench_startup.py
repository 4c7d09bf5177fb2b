"""Start-up: seconds from `fedsim.run(...)` to the start of round 1, cold and warm.

    python experiments/bench_startup.py [--repeats N]

Each repeat is a fresh Python process that runs the default experiment's fleet (100 devices, 2 Ray
hosts, Fashion-MNIST, the seed MLP) for one round twice: the first run is cold (Ray starts, a worker
loads the data and converts the model, the hosts import TensorFlow); the second, in the same process,
is warm (Ray and the hosts are kept, the conversion is cached). Prints and saves startup.csv /
startup.md under results/bench/ with the per-stage seconds and the targets: cold <= 10 s, warm <= 3 s.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import datetime

import pandas as pd

from fedsim.report.tables import publish

TARGETS = {"cold": 10.0, "warm": 3.0}

CHILD = """
import json, sys, fedsim
out = sys.argv[1]
rows = []
for kind in ("cold", "warm"):
    run = fedsim.run(devices=100, rounds=1, hosts=2, out=f"{out}/{kind}", progress=False)
    r = run.rounds.iloc[0]
    rows.append({"start": kind, "to_round_1_s": float(r["elapsed_s"] - r["wall_s"]),
                 **{f"{k}_s": v for k, v in run.meta["startup_s"].items() if k not in ("warm", "total")},
                 "warm_hosts": run.meta["startup_s"]["warm"]})
print("ROWS" + json.dumps(rows))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    rows = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, "-c", CHILD, tmp], capture_output=True, text=True, timeout=600)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("ROWS")), None)
            if line is None:
                raise SystemExit(f"the run failed:\n{proc.stderr[-2000:]}")
            rows += [{"repeat": repeat, **r} for r in json.loads(line[4:])]
    table = pd.DataFrame(rows)
    summary = table.groupby("start", sort=False).median(numeric_only=True).drop(columns="repeat")
    summary["target_s"] = [TARGETS[k] for k in summary.index]
    summary["met"] = summary["to_round_1_s"] <= summary["target_s"]
    header = (
        f"fedsim start-up, {datetime.now():%Y-%m-%d %H:%M}, medians of {args.repeats} fresh processes "
        f"(100 devices, 2 hosts, Fashion-MNIST, MLP); `python experiments/bench_startup.py`"
    )
    footer = "Every repeat:\n\n" + table.round(3).to_markdown(index=False)
    publish(summary.round(3), args.out, "startup", header, footer, index=True, csv=table)


if __name__ == "__main__":
    main()
