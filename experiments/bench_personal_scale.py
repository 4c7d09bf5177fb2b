"""Personal heads at scale: FedPer on 1,000 and on 10,000 devices, every device every round, each keeping
its own head (the MLP's final layer, 1,290 weights) as device state; memory must not grow with the fleet.

    python experiments/bench_personal_scale.py [--fleets 1000,10000] [--rounds 5] [--same-data] [--state-cache-mb MB]

Each fleet runs on Ray with 2 hosts, toy images (about 12 samples a device, or with --same-data the
largest fleet's data set split over every fleet), personalised evaluation
on a seeded sample of 500 devices every round. Each run is made in a fresh process, whose PSS with
Ray's processes is sampled every half second; reported per fleet: the peak PSS in the first rounds
and in the last two, the devices keeping state, its size on disk, and seconds per round. The target: the 10,000-device
run's peak within 10% of the 1,000-device run's. FedAvg runs on the same fleets (--strategies) say what
the fleet's size costs by itself (its data and tables grow with it) and so what personal state adds.
Writes personal_scale.csv / .md (with --same-data personal_scale_same_data.*) to --out (results/bench).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from memory import Sampler

import fedsim
from fedsim.report.tables import publish

FLOOR = 1.10  # the larger fleet's peak PSS against the smaller one's


def measure(strategy: str, devices: int, data_devices: int, rounds: int, cache_mb: float | None, root: Path) -> dict:
    """One run's row: its peak PSS (this process and Ray's, sampled every half second) per round."""
    sampler = Sampler()
    sampler.start()
    began = time.perf_counter()
    run = fedsim.run(
        out=str(root / f"{strategy}-{devices}"),
        dataset="toy_images",
        # per class: ~12.5 images a device of `data_devices`, a quarter of each device's share its test split
        toy_samples=max(20, data_devices * 10 // 8),
        devices=devices,
        per_round=devices,
        rounds=rounds,
        strategy=strategy,
        device_test_fraction=0.25,
        personal_eval_devices=500 if strategy == "fedper" else None,
        seed=0,
        hosts=2,
        progress=False,
        **({} if cache_mb is None else {"state_cache_mb": cache_mb}),
    )
    sampler.finish()
    fedsim.release()
    peaks = sampler.per_round(began, run.rounds["elapsed_s"].to_numpy())
    on_disk = sum(f.stat().st_size for f in (run.path / "device_state").iterdir())
    return {
        "strategy": strategy,
        "devices": devices,
        "rounds": rounds,
        "pss_peak_first_rounds_mb": max(peaks[: max(1, len(peaks) - 2)]),
        "pss_peak_last_rounds_mb": max(peaks[-2:]),
        "devices_keeping_state": len(run.device_state_index()),
        "state_on_disk_mb": round(on_disk / 1e6, 1),
        "median_round_s": round(float(run.rounds["wall_s"].median()), 2),
        "personal_acc_mean": round(float(run.rounds["personal_acc_mean"].iloc[-1]), 4)
        if "personal_acc_mean" in run.rounds
        else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", default="1000,10000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--strategies",
        default="fedper,fedavg",
        help="fedper, and fedavg on the same fleets: what the fleet's size costs without personal state",
    )
    parser.add_argument(
        "--same-data",
        action="store_true",
        help="every fleet splits the largest fleet's data set (so the data does not grow with the fleet, and "
        "what grows is the fleet's own cost); default: about 10 samples a device",
    )
    parser.add_argument(
        "--state-cache-mb",
        type=float,
        default=None,
        help="the runs' --state-cache-mb (default: fedsim's); the files' names end in _cacheN where it is given",
    )
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fedsim-bench-personal-"))
    largest = max(int(n) for n in args.fleets.split(","))
    rows = []
    try:
        for strategy, devices in ((s, int(n)) for s in args.strategies.split(",") for n in args.fleets.split(",")):
            # each run in a fresh process: one run's leftovers (its data, its allocator's pages) would
            # otherwise count in the next one's peak
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                rows.append(
                    pool.apply(
                        measure,
                        (
                            strategy,
                            devices,
                            largest if args.same_data else devices,
                            args.rounds,
                            args.state_cache_mb,
                            root,
                        ),
                    )
                )
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = pd.DataFrame(rows)
    fedper = table[table["strategy"] == "fedper"]
    small, large = fedper["pss_peak_last_rounds_mb"].iloc[0], fedper["pss_peak_last_rounds_mb"].iloc[-1]
    ratio = large / small
    # what personal state adds at each fleet size: FedPer's peak over FedAvg's on the same fleet
    peaks = table.pivot(index="devices", columns="strategy", values="pss_peak_last_rounds_mb")
    added = (peaks["fedper"] - peaks["fedavg"]).round(1).to_dict() if "fedavg" in peaks else {}
    data = "the largest fleet's set split over each fleet" if args.same_data else "about 12 a device"
    cache = "" if args.state_cache_mb is None else f" --state-cache-mb {args.state_cache_mb:g}"
    header = (
        f"FedPer at scale, {dt.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, "
        f"`python experiments/bench_personal_scale.py --fleets {args.fleets} --rounds {args.rounds}"
        f"{' --same-data' if args.same_data else ''}{cache}`: Ray, 2 hosts, toy images "
        f"({data}), "
        "the MLP with its head personal (each device keeps 1,290 weights), every device every round. "
        f"Peak PSS of every fedsim process in the last two rounds: {fedper['devices'].iloc[-1]:,} devices "
        f"{large:.0f} MB against {fedper['devices'].iloc[0]:,} devices {small:.0f} MB: {ratio:.3f}x "
        f"(target at most {FLOOR:.2f}x: {'met' if ratio <= FLOOR else 'NOT met'})."
        + (
            " FedAvg on the same fleets (no personal state: the fleet's own cost, its data and tables growing "
            "with it): FedPer's peak minus FedAvg's, "
            + ", ".join(f"{d:,} devices {a:+.0f} MB" for d, a in added.items())
            + "."
            if added
            else ""
        )
    )
    name = "personal_scale" + ("_same_data" if args.same_data else "")
    name += "" if args.state_cache_mb is None else f"_cache{args.state_cache_mb:g}"
    publish(table, args.out, name, header)


if __name__ == "__main__":
    main()
