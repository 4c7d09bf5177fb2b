"""How close a fedsim round comes to the cost of its TFLite work, and what the fleet costs in memory.

    python experiments/bench_overhead.py                      # every row below
    python experiments/bench_overhead.py --rows mlp-10,mlp-1000 --rounds 6
    python experiments/bench_overhead.py --list               # the rows and their settings

Rows (2 hosts unless named; Fashion-MNIST; SGD, batch 32, 1 local epoch; packed checkpoints unless named):
- mlp-10, mlp-100, mlp-1000: every device every round, equal IID shards;
- mlp-10000: 1,000 of 10,000 devices per round;
- mlp-1000-tensors: mlp-1000 with the guide's checkpoint form (one Restore op per weight), for comparison;
- cnn-100: the small CNN (--model cnn);
- mlp-1000-quantity: shards of skewed size (--partition quantity:1.0);
- mlp-1000-per10-h2 / -h8: 10 of 1,000 devices per round, --eval-every 10, on 2 and on 8 hosts;
  -h2-c1s committed once a second (--commit-every 1s, the default since 2026-12-07), -h2-c1 every
  round (--commit-every 1, the default before), -h2-objects through Ray's object store and tasks
  (FEDSIM_EXCHANGE=off);
- mlp-1m: 1,000,000 registered devices, 1,000 per round, on a generated data set (2 samples of 20
  float features per device, natural partition, 10,000 test samples; an .npz made from the seed);
- lstm-100: 100 Shakespeare roles (--dataset shakespeare:20, natural), the FedAvg paper's LSTM
  (--model lstm), batch 10.

For each row:
- floor_s: the signature calls a round makes on its devices (restore, every train batch, save),
  replayed back to back on one interpreter in a child process, divided by min(hosts, CPUs) (median
  of 3 replays of round 2; of each of rounds 2..R where only some devices are selected);
- round_wall_s: median wall time of rounds 2..R of a real `fedsim.run` on Ray (evaluation and the
  writing of the tables included: differences of the rounds table's elapsed_s);
- ratio: median over rounds 2..R of round wall / floor;
- shared_floor_s, shared_ratio: the same calls split over min(hosts, CPUs) processes that replay them
  at the same time (each round its busiest process), alternating with the floor's replays: what the
  signature calls cost where every CPU runs its share at once, as a run's hosts do; the round wall
  over it. The CPUs share caches, memory bandwidth and the clock, so this is a floor the machine
  sets and the first one no implementation can go below;
- in_run_ratio: median over rounds 2..R of round wall / the busiest host's summed train_s (the
  devices' restore, train and save seconds as devices.parquet records them in the run itself);
- host_balance: median over rounds of the busiest host's signature time over the mean host's;
- first_round_s: from the fedsim.run call (Ray start, conversion and data placement included) to the
  end of round 1 (every row starts cold: the warm session is released after each row);
- peak_rss_mb / peak_pss_mb: the largest sum of RSS (PSS: shared pages counted once,
  e.g. the data set every host maps) over this process and all its descendants (Ray's workers and
  daemons), sampled every 0.2 s (PSS every 5 s: the kernel walks a process's page tables to sum it,
  ~10 ms per TensorFlow process, CPU the hosts would otherwise have).
Writes results/bench/overhead.csv and overhead.md with the targets they are compared against.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

import fedsim
from fedsim.checkpoint import read_checkpoint, write_checkpoint
from fedsim.data import DataRecipe, partition
from fedsim.device import Device, Runner
from fedsim.experiment.simulation import data_recipe
from fedsim.loop.coordinator import select_devices
from fedsim.report.tables import publish


@dataclass(frozen=True)
class Row:
    name: str
    devices: int
    model: str = "mlp"
    per_round: int | None = None
    hosts: int = 2
    partition: str = "iid"
    eval_every: int = 1
    checkpoint_format: str = "packed"
    rounds: int | None = None  # None: --rounds
    million: bool = False  # the generated 1M-device data set
    strategy: str = "fedavg"
    dataset: str = "fashion_mnist"
    batch_size: int = 32
    fleet: str | None = None  # device profiles of the simulated clock (--fleet)
    deadline: float | None = None  # simulated seconds (--deadline, stragglers dropped)
    ratio_target: float | None = None
    memory_target_mb: float | None = None  # compared with peak PSS
    first_round_target_s: float | None = None
    commit_every: str | None = None  # --commit-every (default: every round)
    exchange: bool = True  # False: the hosts' arrays and calls through Ray (FEDSIM_EXCHANGE=off)


# Targets: the performance issues' ratio, peak memory (MiB) and time to the first round.
ROWS = [
    Row("mlp-10", 10, ratio_target=1.3),
    Row("mlp-100", 100, ratio_target=1.15),
    Row("mlp-1000", 1000, ratio_target=1.15, memory_target_mb=1536, first_round_target_s=20.0),
    Row("mlp-10000", 10000, per_round=1000, ratio_target=1.6, memory_target_mb=3072),
    Row("mlp-1000-tensors", 1000, checkpoint_format="tensors"),
    Row("cnn-100", 100, model="cnn", ratio_target=1.3),
    Row("mlp-1000-quantity", 1000, partition="quantity:1.0", ratio_target=1.3),
    Row("mlp-1000-per10-h2", 1000, per_round=10, eval_every=10, rounds=41, ratio_target=1.5),
    Row("mlp-1000-per10-h8", 1000, per_round=10, hosts=8, eval_every=10, rounds=41, ratio_target=1.5),
    # the same small rounds committed once a second, and through Ray's object store and tasks
    Row("mlp-1000-per10-h2-c1s", 1000, per_round=10, eval_every=10, rounds=41, ratio_target=1.5, commit_every="1s"),
    Row("mlp-1000-per10-h2-c1", 1000, per_round=10, eval_every=10, rounds=41, commit_every="1"),
    Row("mlp-1000-per10-h2-objects", 1000, per_round=10, eval_every=10, rounds=41, exchange=False),
    # an order statistic: every update's vector crosses to the coordinator (no target: shows its cost)
    Row("mlp-1000-fedmedian", 1000, strategy="fedmedian"),
    # the simulated clock with a deadline: stragglers and dropouts are decided before any host runs
    # them, so a round must cost no more wall time than mlp-1000's (its floor replays every device)
    Row("mlp-1000-skewed-deadline", 1000, fleet="skewed", deadline=10.0),
    Row("mlp-1m", 1_000_000, per_round=1000, partition="natural", million=True, memory_target_mb=2560),
    # text: 100 Shakespeare roles (20 windows each), the FedAvg paper's LSTM, batch 10, every device every round
    Row("lstm-100", 100, model="lstm", dataset="shakespeare:20", partition="natural", batch_size=10, rounds=4),
]


def million_devices_npz(path: Path, devices: int = 1_000_000, per_device: int = 2, features: int = 20) -> Path:
    """A generated data set for a million registered devices: Gaussian features, labels from one fixed
    linear model, `per_device` training samples per device (carried as device ids)."""
    rng = np.random.default_rng(np.random.Philox(key=[0, 0x1E6]))
    w = rng.standard_normal((features, 10)).astype(np.float32)
    x = rng.standard_normal((devices * per_device, features), dtype=np.float32)
    x_test = rng.standard_normal((10_000, features), dtype=np.float32)
    np.savez(
        path,
        x_train=x,
        y_train=np.argmax(x @ w, axis=1).astype(np.int32),
        x_test=x_test,
        y_test=np.argmax(x_test @ w, axis=1).astype(np.int32),
        device_train=np.repeat(np.arange(devices, dtype=np.int64), per_device),
    )
    return path


class RssSampler(threading.Thread):
    """Peak of the summed RSS of this process and every descendant, sampled in the background.

    The sampler runs in the driver, on the CPUs the hosts use, so it is kept cheap: the process tree
    is walked once a second and only the known processes' RSS is read in between.
    """

    def __init__(self, interval_s: float = 0.2, rescan_s: float = 1.0, pss_every: int = 25) -> None:
        super().__init__(daemon=True)
        self.interval_s, self.rescan_s, self.pss_every = interval_s, rescan_s, pss_every
        self.peak_bytes, self.peak_pss_bytes, self._stop_event = 0, 0, threading.Event()
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

    def sample_pss(self) -> int:
        total = 0
        for p in self._procs:
            try:  # smaps_rollup: the kernel's own sum (psutil's memory_full_info parses all of smaps)
                with open(f"/proc/{p.pid}/smaps_rollup") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("Pss:")) * 1024
            except (OSError, StopIteration, ValueError):
                pass
        return total

    def run(self) -> None:
        n = 0
        while not self._stop_event.is_set():
            self.peak_bytes = max(self.peak_bytes, self.sample())
            if n % self.pss_every == 0:
                self.peak_pss_bytes = max(self.peak_pss_bytes, self.sample_pss())
            n += 1
            self._stop_event.wait(self.interval_s)

    def stop(self) -> tuple[float, float]:
        """(peak RSS, peak PSS) in MiB."""
        self._stop_event.set()
        self.join()
        return self.peak_bytes / 2**20, self.peak_pss_bytes / 2**20


def replay(
    artifact: bytes,
    config: fedsim.Config,
    rounds: list[tuple[int, list[int]]],
    start: float = 0.0,
    after: Callable[[Device, Path], None] | None = None,
) -> list[float]:
    """Seconds in the signature calls of each (round, device ids), replayed back to back on one
    interpreter; the calls begin at `start` (time.time(), once data and interpreter are loaded), so
    that replays in parallel processes overlap. `after(device, upload)`: called after each device's
    calls, untimed here (bench_bounds times what a host does between them).

    Runs in a child process (see measure_floor), so this process stays what a fedsim driver is:
    one that never imports TensorFlow, or its memory would be counted in every later run."""
    dataset = data_recipe(config).load()
    shards = partition(
        dataset.y_train, config.devices, config.partition_spec, config.seed, config.min_samples, dataset.device_train
    )
    runner = Runner(artifact)
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    try:
        global_path = scratch / "global.ckpt"
        # the global checkpoint as the coordinator writes it (its layout changes what restore costs)
        global_path.write_bytes(write_checkpoint(read_checkpoint(runner.initial_checkpoint(scratch))))
        time.sleep(max(0.0, start - time.time()))
        totals = []
        for round_num, ids in rounds:
            total = 0.0
            for d in ids:
                device = Device(d, dataset.x_train[shards[d]], dataset.y_train[shards[d]], config.seed)
                # Device.run_round times exactly restore + train batches + save (its train_s).
                total += device.run_round(
                    runner, global_path, round_num, config.local_epochs, config.batch_size, scratch / "d.ckpt"
                ).train_s
                if after is not None:
                    after(device, scratch / "d.ckpt")
            totals.append(total)
        return totals
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def floor_seconds(artifact: bytes, config: fedsim.Config, round_nums: list[int], divisor: int) -> list[float]:
    """Each round's signature calls (its selected devices), back to back on one interpreter, divided
    by `divisor`."""
    rounds = [(r, select_devices(config.devices, config.devices_per_round, config.seed, r)) for r in round_nums]
    return [total / divisor for total in replay(artifact, config, rounds)]


def share_seconds(
    artifact: bytes, config: fedsim.Config, round_nums: list[int], share: int, shares: int, start: float
) -> list[float]:
    """Each round's signature calls of one CPU's share of its devices (every `shares`-th), beginning at
    `start` so that every share's process replays at the same time."""
    rounds = [
        (r, select_devices(config.devices, config.devices_per_round, config.seed, r)[share::shares]) for r in round_nums
    ]
    return replay(artifact, config, rounds, start)


def measure_floor(artifact: bytes, config: fedsim.Config, rounds: int, divisor: int) -> tuple[np.ndarray, np.ndarray]:
    """Per round 2..R: the replayed floor, and the shared floor: the same calls split over `divisor`
    processes that replay at once (each round the busiest share), as the run's hosts must run them on
    CPUs that share caches and memory. Every device every round: medians of 3 replays of round 2 (the
    same work each round), alone and shared in turn; a selection per round: each round's own devices,
    the median of 3 replays of them, alone and shared in turn."""
    ctx = multiprocessing.get_context("spawn")
    round_nums = [2] if config.devices_per_round >= config.devices else list(range(2, rounds + 1))
    alone, shared = [], []
    with ctx.Pool(divisor) as pool:
        for _ in range(3):
            alone.append(np.array(pool.apply(floor_seconds, (artifact, config, round_nums, divisor))))
            start = time.time() + 8.0  # every process has loaded its data and interpreter by then
            parts = pool.starmap(
                share_seconds, [(artifact, config, round_nums, c, divisor, start) for c in range(divisor)]
            )
            shared.append(np.max(np.array(parts), axis=0))
    alone_s, shared_s = np.median(np.array(alone), axis=0), np.median(np.array(shared), axis=0)
    if len(round_nums) == 1:
        return np.full(rounds - 1, float(alone_s[0])), np.full(rounds - 1, float(shared_s[0]))
    return alone_s, shared_s


def bench_one(row: Row, rounds: int, out: Path) -> dict:
    rounds = row.rounds or rounds
    data = str(million_devices_npz(out / "million.npz")) if row.million else None
    config = fedsim.Config(
        devices=row.devices,
        rounds=rounds,
        hosts=row.hosts,
        per_round=row.per_round,
        seed=0,
        local_epochs=1,
        batch_size=row.batch_size,
        lr=0.05,
        out=str(out / f"run-{row.name}"),
        name="bench_overhead",
        model=row.model,
        partition=row.partition,
        eval_every=row.eval_every,
        checkpoint_format=row.checkpoint_format,
        data=data,
        dataset=row.dataset,
        strategy=row.strategy,
        fleet=row.fleet,
        deadline=row.deadline,
        commit_every=row.commit_every,
    )
    sampler = RssSampler()
    sampler.start()
    if not row.exchange:
        os.environ["FEDSIM_EXCHANGE"] = "off"
    try:
        run = fedsim.run(config, progress=False)
    finally:
        peak_rss, peak_pss = sampler.stop()
        if not row.exchange:
            os.environ.pop("FEDSIM_EXCHANGE", None)
    elapsed = run.rounds["elapsed_s"].to_numpy()
    walls = np.diff(elapsed)
    artifact = (run.path / "model.tflite").read_bytes()
    divisor = min(run.meta["hosts"], psutil.cpu_count() or 1)
    floors, shared_floors = measure_floor(artifact, config, rounds, divisor)  # the run's hosts parked, idle
    # Every row starts cold, as a fresh process would: the warm session fedsim.run keeps for the next
    # run would otherwise carry one row's hosts (and memory) into the next, and time a warm start.
    fedsim.release()
    per_host = run.devices[run.devices["round"] >= 2].groupby(["round", "host"])["train_s"].sum().unstack(fill_value=0)
    balance = float(np.median(per_host.max(axis=1) / per_host.mean(axis=1))) if len(per_host) else float("nan")
    # the round's wall over its busiest host's signature seconds as the run itself recorded them
    busiest = per_host.max(axis=1).reindex(range(2, rounds + 1)).to_numpy()
    in_run = float(np.nanmedian(walls / busiest)) if len(per_host) else float("nan")
    if data:
        Path(data).unlink()
    return {
        "row": row.name,
        "model": row.model,
        "checkpoint": row.checkpoint_format,
        "strategy": row.strategy,
        "fleet": (row.fleet or "") + (f", deadline {row.deadline:g} s" if row.deadline else ""),
        "devices": row.devices,
        "per_round": config.devices_per_round,
        "hosts": run.meta["hosts"],
        "partition": config.partition_spec,
        "eval_every": row.eval_every,
        "floor_s": round(float(np.median(floors)), 4),
        "round_wall_s": round(float(np.median(walls)), 4),
        "ratio": round(float(np.median(walls / floors)), 3),
        "shared_floor_s": round(float(np.median(shared_floors)), 4),
        "shared_ratio": round(float(np.median(walls / shared_floors)), 3),
        "in_run_ratio": round(in_run, 3),
        "host_balance": round(balance, 3),
        "first_round_s": round(float(elapsed[0]), 2),
        "peak_rss_mb": round(peak_rss),
        "peak_pss_mb": round(peak_pss),
        "final_accuracy": round(run.final_accuracy, 4),
        "ratio_target": row.ratio_target,
        "memory_target_mb": row.memory_target_mb,
        "first_round_target_s": row.first_round_target_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(r.name for r in ROWS), help="comma-separated row names (--list)")
    # 12: the median then covers 11 round times, so one busy moment on a shared machine cannot move it
    parser.add_argument("--rounds", type=int, default=12, help="rounds per run where the row sets none")
    parser.add_argument("--out", default="results/bench", help="folder for overhead.csv / overhead.md")
    parser.add_argument("--list", action="store_true", help="print the rows and exit")
    args = parser.parse_args()
    if args.list:
        print(pd.DataFrame([asdict(r) for r in ROWS]).to_markdown(index=False))
        return
    by_name = {r.name: r for r in ROWS}
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; --list shows them")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="fedsim-bench-runs-"))
    DataRecipe("fashion_mnist").check()  # fail here, before any Ray start, if the data set is missing
    rows = []
    try:
        for name in names:
            row = bench_one(by_name[name], args.rounds, runs)
            rows.append(row)
            print(", ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    finally:
        shutil.rmtree(runs, ignore_errors=True)
    table = pd.DataFrame(rows)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    md = (
        f"fedsim overhead benchmark, {stamp}, {psutil.cpu_count()} CPUs, {args.rounds} rounds per row unless "
        "set, SGD, batch 32, 1 local epoch. ratio = median over rounds 2..R of round wall / floor; "
        "shared_ratio: over the same calls replayed by every CPU's process at once; memory "
        "target compared with peak PSS."
    )
    publish(table, out, "overhead", md)


if __name__ == "__main__":
    main()
