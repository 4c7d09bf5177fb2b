"""How close a fedsim round comes to the cost of its TFLite work, and what the fleet costs in memory.

    python experiments/bench_overhead.py                      # 10, 100, 1000, 10000 devices, 2 hosts
    python experiments/bench_overhead.py --devices 10,100 --rounds 4
    python experiments/bench_overhead.py --devices 1000 --cnn-devices ""  # MLP rows only

Rows: the seed MLP at each --devices size, and the small CNN (--model cnn) at each --cnn-devices size.

For each fleet size N (every device every round up to 1000; 1,000 devices per round above that):
- floor_s: the signature calls a round makes on its devices (restore, every train batch, save),
  replayed back to back on one interpreter in a child process, divided by the number of hosts
  (median of 3 replays);
- round_wall_s: median wall time of rounds 2..R of a real `fedsim.run` on Ray (evaluation and the
  writing of the tables included: differences of the rounds table's elapsed_s);
- ratio = round_wall_s / floor_s; first_round_s: from the fedsim.run call (Ray start, conversion and
  data placement included) to the end of round 1; peak_rss_mb: the largest sum of RSS over this
  process and all its descendants (Ray's workers and daemons), sampled every 0.2 s.
Writes results/bench/overhead.csv and overhead.md with the targets they are compared against.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

import fedsim
from fedsim.coordinator import select_devices
from fedsim.data import iid_partition, load_fashion_mnist
from fedsim.device import Device, Runner

# Targets of the performance issue: ratio, peak memory (MiB) and time to the first round.
RATIO_TARGET = {10: 1.3, 100: 1.3, 1000: 1.3, 10000: 1.6}  # the CNN rows share them
RSS_TARGET_MB = {1000: 2048, 10000: 3072}
FIRST_ROUND_TARGET_S = {1000: 20.0}
PER_ROUND_CAP = 1000  # above this many devices, 1,000 are selected each round


class RssSampler(threading.Thread):
    """Peak of the summed RSS of this process and every descendant, sampled in the background.

    The sampler runs in the driver, on the CPUs the hosts use, so it is kept cheap: the process tree
    is walked once a second and only the known processes' RSS is read in between.
    """

    def __init__(self, interval_s: float = 0.2, rescan_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.rescan_s = interval_s, rescan_s
        self.peak_bytes, self._stop_event = 0, threading.Event()
        self._procs: list[psutil.Process] = []
        self._scanned = -float("inf")

    def sample(self) -> int:
        now = time.monotonic()
        if now - self._scanned >= self.rescan_s:
            me = psutil.Process()
            self._procs, self._scanned = [me, *me.children(recursive=True)], now
        total = 0
        for p in self._procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak_bytes = max(self.peak_bytes, self.sample())
            self._stop_event.wait(self.interval_s)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak_bytes / 2**20


def floor_seconds(artifact: bytes, config: fedsim.Config, round_num: int, hosts: int) -> float:
    """The round's signature calls, back to back on one interpreter, divided by the hosts.

    Runs in a child process (see measure_floor), so this process stays what a fedsim driver is:
    one that never imports TensorFlow, or its memory would be counted in every later run."""
    dataset = load_fashion_mnist()
    shards = iid_partition(len(dataset.y_train), config.devices, config.seed)
    selected = select_devices(config.devices, config.devices_per_round, config.seed, round_num)
    runner = Runner(artifact)
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        global_path = scratch / "global.ckpt"
        global_path.write_bytes(runner.initial_checkpoint(scratch))
        devices = [Device(d, dataset.x_train[shards[d]], dataset.y_train[shards[d]], config.seed) for d in selected]
        total = 0.0
        for device in devices:
            # Device.run_round times exactly restore + train batches + save (its train_s).
            total += device.run_round(runner, global_path, round_num, config.local_epochs, config.batch_size,
                                      scratch / "d.ckpt").train_s
        return total / hosts
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure_floor(artifact: bytes, config: fedsim.Config, round_num: int, hosts: int, repeats: int = 3) -> float:
    """Median of `repeats` replays in one child process (the machine is noisy)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return float(np.median([pool.apply(floor_seconds, (artifact, config, round_num, hosts)) for _ in range(repeats)]))


def bench_one(devices: int, rounds: int, hosts: int, out: Path, model: str = "mlp") -> dict:
    fraction = 1.0 if devices <= PER_ROUND_CAP else PER_ROUND_CAP / devices
    config = fedsim.Config(devices=devices, rounds=rounds, hosts=hosts, fraction=fraction, seed=0,
                           local_epochs=1, batch_size=32, lr=0.05, out=str(out / f"run-{model}-{devices}"),
                           name="bench_overhead", model=model)
    sampler = RssSampler()
    sampler.start()
    try:
        run = fedsim.run(config, progress=False)
    finally:
        peak_mb = sampler.stop()
    elapsed = run.rounds["elapsed_s"].to_numpy()
    round_wall = float(np.median(np.diff(elapsed))) if len(elapsed) > 1 else float("nan")
    artifact = (run.path / "model.tflite").read_bytes()
    floor = measure_floor(artifact, config, round_num=2, hosts=run.meta["hosts"])
    return {
        "model": model,
        "devices": devices,
        "hosts": run.meta["hosts"],
        "devices_per_round": config.devices_per_round,
        "floor_s": round(floor, 4),
        "round_wall_s": round(round_wall, 4),
        "ratio": round(round_wall / floor, 3),
        "first_round_s": round(float(elapsed[0]), 2),
        "peak_rss_mb": round(peak_mb),
        "final_accuracy": round(run.final_accuracy, 4),
        "ratio_target": RATIO_TARGET.get(devices),
        "peak_rss_target_mb": RSS_TARGET_MB.get(devices),
        "first_round_target_s": FIRST_ROUND_TARGET_S.get(devices),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="10,100,1000,10000", help="comma-separated fleet sizes")
    # 12: the median then covers 11 round times, so one busy moment on a shared machine cannot move it
    parser.add_argument("--rounds", type=int, default=12, help="rounds per run (the median uses rounds 2..R)")
    parser.add_argument("--hosts", type=int, default=2, help="Ray device hosts")
    parser.add_argument("--cnn-devices", default="100", help="fleet sizes for the CNN rows (empty: none)")
    parser.add_argument("--out", default="results/bench", help="folder for overhead.csv / overhead.md")
    args = parser.parse_args()
    sizes = [("mlp", int(s)) for s in args.devices.split(",") if s.strip()]
    sizes += [("cnn", int(s)) for s in args.cnn_devices.split(",") if s.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="fedsim-bench-runs-"))
    load_fashion_mnist()  # fail here, before any Ray start, if the data set is missing
    rows = []
    try:
        for model, n in sizes:
            row = bench_one(n, args.rounds, args.hosts, runs, model)
            rows.append(row)
            print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    table = pd.DataFrame(rows)
    table.to_csv(out / "overhead.csv", index=False)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    md = (f"fedsim overhead benchmark, {stamp}, {psutil.cpu_count()} CPUs, "
          f"{args.rounds} rounds per size, Fashion-MNIST, SGD, batch 32, 1 local epoch\n\n{table.to_markdown(index=False)}\n")
    (out / "overhead.md").write_text(md)
    print("\n" + md)
    print(f"wrote {out / 'overhead.csv'} and {out / 'overhead.md'}")


if __name__ == "__main__":
    main()
