"""Start-up: seconds to the start of round 1, cold and warm, against pfl-research's import and setup.

    python experiments/bench_startup.py [--repeats N] [--pfl-python .venv-pfl/bin/python]

Each repeat starts fresh Python processes that run the default experiment's fleet (100 devices, 2 Ray
hosts, Fashion-MNIST, the seed MLP) for one round:
- cold (empty cache): a process whose conversion cache (FEDSIM_CACHE) is empty, as on a machine's
  first run: Ray starts, a worker loads the data and converts the model (importing TensorFlow);
- cold: a second fresh process on the cache the first filled, as every later run, sweep point and
  script of that machine: Ray starts, the worker loads the data, the hosts start (none imports the
  TensorFlow package, see fedsim.device.tflite_loader);
- warm: a second run inside that process (Ray and the hosts kept, fedsim.run's warm start).
to_round_1_s is measured as the run records it (from the fedsim.run call to round 1's start, the
parts in ray_s / prepare_s / hosts_s, conversion_s being part of prepare_s); from_launch_s adds the
process's own start and `import fedsim`, the measure the peer gets. With --pfl-python, the same
repeat runs experiments/peers/pfl_anchor.py (100 devices, 1 round): its from_launch_s is from the
launch of its 2 worker processes to the start of training (imports, data, model).
Targets: cold <= 6 s and below pfl-research's from launch (from_launch_s against from_launch_s);
warm <= 3 s. Prints and saves startup.csv / startup.md under results/bench/ (medians over repeats).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from fedsim.report.tables import publish

TARGETS = {"cold (empty cache)": None, "cold": 6.0, "warm": 3.0}
PEER = Path(__file__).parent / "peers" / "pfl_anchor.py"

CHILD = """
import json, sys, time
launched = float(sys.argv[3])
import fedsim
out, kinds = sys.argv[1], sys.argv[2].split(",")
rows = []
for kind in kinds:
    called = time.time()
    run = fedsim.run(devices=100, rounds=1, hosts=2, out=f"{out}/{kind}", progress=False)
    r = run.rounds.iloc[0]
    stages = run.meta["startup_s"]
    to_round_1 = float(r["elapsed_s"] - r["wall_s"])
    # the process's start and `import fedsim` count for the first run of the process only
    from_launch = called - launched + to_round_1 if kind != "warm" else None
    rows.append({"start": kind, "to_round_1_s": to_round_1, "from_launch_s": from_launch,
                 **{f"{k}_s": v for k, v in stages.items() if k not in ("warm", "total")},
                 "warm_hosts": stages["warm"]})
print("ROWS" + json.dumps(rows))
"""


def fedsim_starts(kinds: list[str], cache_dir: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        launched = time.time()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, tmp, ",".join(kinds), repr(launched)],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "FEDSIM_CACHE": cache_dir},
        )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("ROWS")), None)
    if line is None:
        raise SystemExit(f"the run failed:\n{proc.stderr[-2000:]}")
    return json.loads(line[4:])


def pfl_start(python: str) -> dict:
    proc = subprocess.run(
        [python, str(PEER), "--devices", "100", "--rounds", "1"], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise SystemExit(f"pfl-research failed:\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "start": "pfl-research",
        "from_launch_s": r["to_round_1_s"],
        "import_s": r["import_s"],
        "setup_s": r["setup_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--pfl-python", default=".venv-pfl/bin/python", help="the peer's environment (skipped if absent)"
    )
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    peer = Path(args.pfl_python).exists()
    rows = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache_dir:
            rows += [{"repeat": repeat, **r} for r in fedsim_starts(["cold (empty cache)"], cache_dir)]
            rows += [{"repeat": repeat, **r} for r in fedsim_starts(["cold", "warm"], cache_dir)]
        if peer:
            rows.append({"repeat": repeat, **pfl_start(args.pfl_python)})
        print(pd.DataFrame(rows[-4:]).round(2).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("start", sort=False).median(numeric_only=True).drop(columns="repeat")
    summary["target_s"] = [TARGETS.get(k) for k in summary.index]
    met = summary["to_round_1_s"] <= summary["target_s"]
    if peer:  # cold must also beat the peer's start, launch to launch
        summary["below_pfl"] = summary["from_launch_s"] < summary.loc["pfl-research", "from_launch_s"]
        met &= summary["below_pfl"] | (summary.index != "cold")
    summary["met"] = [bool(m) if TARGETS.get(k) is not None else None for k, m in zip(summary.index, met)]
    header = (
        f"fedsim start-up, {datetime.now():%Y-%m-%d %H:%M}, medians of {args.repeats} repeats (100 devices, 2 hosts, "
        f"Fashion-MNIST, MLP){'; pfl-research 0.6 from experiments/peers/pfl_anchor.py' if peer else ''}; "
        f"`python experiments/bench_startup.py --repeats {args.repeats}`"
    )
    footer = "Every repeat:\n\n" + table.round(3).to_markdown(index=False)
    publish(summary.round(3), args.out, "startup", header, footer, index=True, csv=table)


if __name__ == "__main__":
    main()
