"""Device state at scale: 100,000 devices that each keep ~100 KB across their rounds (top-k's
error-feedback residual of a 25,450-parameter MLP), on Ray with 2 hosts. Memory must stay flat as the
state on disk grows, and a run killed midway and resumed must end exactly as the run never killed.

    python experiments/bench_device_state.py [--devices 100000] [--per-round 10000] [--rounds 12]

It runs the fleet twice: once straight, sampling the PSS of every fedsim process (this one and Ray's)
every half second, and once stopped by Ctrl-C (an engine that raises it) before round --kill-after +
1, then `fedsim.resume`d. Reported: PSS over the run (peak in the first rounds against the last),
device state on disk after each round, and whether the resumed run's tables, global model and every
device's state equal the straight run's. Writes device_state.csv / .md to --out (results/bench).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from memory import Sampler

import fedsim
from fedsim.engine.ray import RayEngine
from fedsim.report.tables import publish

WALL = ["wall_s", "hosts_s", "aggregate_s", "evaluate_s", "elapsed_s"]


def build(task: Any) -> Any:
    """An MLP with 32 hidden units: 25,450 weights, so a residual of ~100 KB a device."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=task.input_shape),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(task.num_classes, activation="softmax", name="classifier"),
        ],
        name="mlp32",
    )


class StopBefore(RayEngine):
    """A Ray engine that is interrupted (Ctrl-C) when round `stop` begins."""

    def __init__(self, stop: int) -> None:
        super().__init__(hosts=2)
        self.stop = stop

    def run_round(self, round_num: int, *args: Any, **kwargs: Any) -> Any:
        if round_num == self.stop:
            raise KeyboardInterrupt
        return super().run_round(round_num, *args, **kwargs)


def states_digest(run: fedsim.Run) -> tuple[int, str]:
    """(devices that keep state, a hash of every device's state in id order)."""
    h, count = hashlib.sha256(), 0
    for d, values in run.device_states():
        count += 1
        for key, value in sorted(values.items()):
            h.update(f"{d}:{key}".encode() + value.tobytes())
    return count, h.hexdigest()[:16]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100_000)
    parser.add_argument("--per-round", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--kill-after", type=int, default=6)
    parser.add_argument("--out", default="results/bench")
    parser.add_argument("--root", default=None, help="where the run folders go (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="fedsim-bench-state-"))
    settings = dict(
        dataset="toy_images",
        toy_samples=max(20, args.devices // 10),  # 10 classes: about 10 samples a device
        devices=args.devices,
        per_round=args.per_round,
        rounds=args.rounds,
        compress="topk:0.01",
        eval_every=args.rounds,
        seed=0,
        hosts=2,
        progress=False,
    )
    sampler = Sampler()
    sampler.start()
    began = time.perf_counter()
    straight = fedsim.run(out=str(root / "straight"), model_builder=build, **settings)
    sampler.finish()
    fedsim.release()
    on_disk = sum(f.stat().st_size for f in (straight.path / "device_state").iterdir()) / 2**30
    peaks = sampler.per_round(began, straight.rounds["elapsed_s"].to_numpy())
    per_round = [{"round": int(r), "pss_peak_mb": p} for r, p in zip(straight.rounds["round"], peaks)]
    with contextlib.suppress(KeyboardInterrupt):  # the killing engine's Ctrl-C: the run says it was interrupted
        fedsim.run(out=str(root / "killed"), model_builder=build, engine=StopBefore(args.kill_after + 1), **settings)
    fedsim.release()
    resumed = fedsim.resume(root / "killed")
    fedsim.release()
    # (and every stage's seconds on the hosts, <stage>_host_s: timings, as the walls)
    columns = [c for c in straight.rounds.columns if c not in WALL and not c.endswith("_host_s")]
    same_tables = straight.rounds[columns].equals(resumed.rounds[columns])
    device_columns = [c for c in straight.devices.columns if c not in ("train_s", "host")]
    same_devices = straight.devices[device_columns].equals(resumed.devices[device_columns])
    same_model = (straight.path / "global.ckpt").read_bytes() == (resumed.path / "global.ckpt").read_bytes()
    kept_a, digest_a = states_digest(straight)
    kept_b, digest_b = states_digest(resumed)
    table = pd.DataFrame(per_round)
    first, last = table["pss_peak_mb"].iloc[1:3].max(), table["pss_peak_mb"].iloc[-2:].max()
    header = (
        f"fedsim device state at scale, {dt.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, "
        f"`python experiments/bench_device_state.py --devices {args.devices} --per-round {args.per_round} "
        f"--rounds {args.rounds}`: toy images, an MLP of 25,450 weights, --compress topk:0.01 (each device "
        f"keeps a {25_450 * 4 / 1000:.1f} KB residual), Ray, 2 hosts. PSS of every fedsim process, peak per "
        f"round: rounds 2-3 {first:.0f} MB, last two rounds {last:.0f} MB ({last / first:.3f}x) while "
        f"{kept_a:,} devices' state ({on_disk:.2f} GiB of segments) accumulated on disk. Killed before round "
        f"{args.kill_after + 1} and resumed: rounds table {'identical' if same_tables else 'DIFFERENT'}, devices "
        f"table {'identical' if same_devices else 'DIFFERENT'}, global.ckpt "
        f"{'identical' if same_model else 'DIFFERENT'}, device state {kept_b:,} devices, "
        f"{'identical' if digest_a == digest_b else 'DIFFERENT'} ({digest_a} / {digest_b})."
    )
    publish(table, args.out, "device_state", header)
    if not args.root:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
