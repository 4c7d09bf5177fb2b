"""Recording a run stays flat: the cost of writing a round does not grow with the rounds before it.

    python experiments/bench_recording.py                    # 1000 rounds x 1000 devices
    python experiments/bench_recording.py --rounds 200 --devices 100

Writes the run folder of a 1000-round, 1000-device run through fedsim's RunWriter (the rows a
coordinator records: one round row and one row per device each round, a 400 KB global checkpoint)
and times each round's write (the work the writer's background thread does while the hosts run
the next round). Reports the median write time of the first and of the last 100 rounds, their
ratio (target <= 1.2: flat), the writer process's RSS after the first and the last 100 rounds, and
how long load_run takes to read the whole folder back. Writes results/bench/recording.csv and .md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

import fedsim
from fedsim.checkpoint import write_checkpoint
from fedsim.report.tables import publish
from fedsim.results import RunWriter, claim_run_folder

FLAT_TARGET = 1.2


def rows(round_num: int, devices: int, rng: np.random.Generator) -> tuple[dict, list[dict]]:
    round_row = {
        "round": round_num,
        "test_accuracy": rng.random(),
        "test_loss": rng.random(),
        "train_loss": rng.random(),
        "devices_selected": devices,
        "devices_reported": devices,
        "devices_accepted": devices,
        "samples": 60 * devices,
        "wall_s": 1.0,
        "hosts_s": 0.9,
        "aggregate_s": 0.01,
        "evaluate_s": 0.02,
        "elapsed_s": float(round_num),
        "bytes_up": 400_000 * devices,
        "bytes_down": 400_000 * devices,
    }
    losses, times = rng.random(devices), rng.random(devices) / 1e3
    device_rows = [
        {
            "round": round_num,
            "device_id": d,
            "host": d % 2,
            "samples": 60,
            "train_loss": float(losses[d]),
            "train_s": float(times[d]),
            "checkpoint_bytes": 407_600,
            "status": "ok",
            "reason": "",
            "test_accuracy": float("nan"),
        }
        for d in range(devices)
    ]
    return round_row, device_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--out", default="results/bench", help="folder for recording.csv / .md")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    checkpoint = write_checkpoint({"w": rng.standard_normal(101_770).astype(np.float32)})
    root = Path(tempfile.mkdtemp(prefix="fedsim-bench-recording-"))
    me = psutil.Process()
    try:
        writer = RunWriter(claim_run_folder(root / "run"), {"config": {"rounds": args.rounds}})
        times, rss = [], {}
        for r in range(1, args.rounds + 1):
            round_row, device_rows = rows(r, args.devices, rng)
            start = time.perf_counter()
            writer._write_round(round_row, device_rows, checkpoint)  # what the writer thread does per round
            times.append(time.perf_counter() - start)
            if r in (min(100, args.rounds), args.rounds):
                rss[r] = me.memory_info().rss / 2**20
        writer.close()
        start = time.perf_counter()
        run = fedsim.load_run(root / "run")
        load_s = time.perf_counter() - start
        assert len(run.devices) == args.rounds * args.devices and len(run.rounds) == args.rounds
    finally:
        shutil.rmtree(root, ignore_errors=True)
    window = min(100, args.rounds)
    first, last = float(np.median(times[:window])) * 1e3, float(np.median(times[-window:])) * 1e3
    row = {
        "rounds": args.rounds,
        "devices": args.devices,
        "first_write_ms": round(first, 2),
        "last_write_ms": round(last, 2),
        "last_vs_first": round(last / first, 3),
        "flat_target": FLAT_TARGET,
        "rss_mb_first": round(rss[min(100, args.rounds)]),
        "rss_mb_last": round(rss[args.rounds]),
        "load_run_s": round(load_s, 2),
    }
    print(", ".join(f"{k}={v}" for k, v in row.items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"round": np.arange(1, args.rounds + 1), "write_ms": np.round(np.array(times) * 1e3, 3)}).to_csv(
        out / "recording_rounds.csv", index=False
    )
    md = (
        f"fedsim recording benchmark, {time.strftime('%Y-%m-%d %H:%M')}: {args.rounds} rounds x {args.devices} "
        f"device rows written through RunWriter; median write time of the first and the last {window} rounds "
        "(per-round times in recording_rounds.csv)."
    )
    publish(pd.DataFrame([row]), out, "recording", md)


if __name__ == "__main__":
    main()
