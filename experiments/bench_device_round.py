"""What a device's round costs on its own: the artifact's signatures and the host's work, per checkpoint format.

    python experiments/bench_device_round.py                 # MLP and CNN, 1000 Fashion-MNIST devices
    python experiments/bench_device_round.py --devices 200 --models mlp

Three configurations per model, in the same process one after the other, so the ratios are of one run:
- before: the guide's checkpoint form (one tensor per weight, one Restore op each) restoring a global
  checkpoint laid out as tf.raw_ops.Save lays it out (one data block), which is what fedsim did before;
- tensors: the same artifact restoring the global checkpoint as fedsim now writes it (one block per
  entry), which is what a .tflite made elsewhere gets;
- packed: fedsim's default artifact (every weight in one tensor, one Restore op) and layout.
Columns:
- restore_ms (of the global checkpoint in that layout), save_ms, train_batch_ms, infer_batch_ms:
  median of --repeats calls on one interpreter, one thread, batch 32;
- host_ms: a host's own work per device outside the signature calls (shuffling, reading the upload,
  checking its crc32c and values, adding it to the host's sum), measured inside one host running
  one round of N IID devices in this process: (round wall - sum of the devices' signature time) / N,
  median of --rounds rounds;
- fixed_ms = restore + save + host: what a device costs besides its training.
Both formats run in the same process, one after the other, so the before/after ratio is of one run.
Writes results/bench/device_round.csv and .md.
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
from fedsim.checkpoint import read_checkpoint
from fedsim.checkpoint.tfv1_write import write_tfv1
from fedsim.data import DataRecipe, iid_partition
from fedsim.device import Runner
from fedsim.engine.host import DeviceHost
from fedsim.engine.layout import shard_data
from fedsim.engine.settings import HostSettings
from fedsim.model import cache
from fedsim.model.builders import MODELS, ArtifactRecipe
from fedsim.pipeline import plain_round
from fedsim.report.tables import publish

CONFIGURATIONS = [("before", "tensors", True), ("tensors", "tensors", False), ("packed", "packed", False)]


def median_ms(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def host_ms_per_device(artifact: bytes, dataset: fedsim.Dataset, devices: int, rounds: int, one_block: bool) -> float:
    fleet = shard_data(dataset, iid_partition(len(dataset.y_train), devices, 0))
    host = DeviceHost(0, fleet, HostSettings(1, 32, 0), artifact=artifact)
    try:
        initial = write_tfv1(read_checkpoint(host.initial_checkpoint()), one_block=one_block)
        work = plain_round(initial)  # FedAvg's: each upload checked and summed by its samples
        ids = list(range(devices))
        per_device = []
        for r in range(1, rounds + 2):
            start = time.perf_counter()
            result = host.run_round(r, initial, ids, work)
            wall = time.perf_counter() - start
            assert all(rep.status == "ok" for rep in result.reports)
            if r > 1:  # round 1 warms the reader's scatter-read plan
                per_device.append((wall - sum(rep.train_s for rep in result.reports)) / devices)
        return float(np.median(per_device)) * 1e3
    finally:
        host.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=1000, help="IID Fashion-MNIST devices in the host's round")
    parser.add_argument("--models", default="mlp,cnn", help="comma-separated built-in models")
    parser.add_argument("--rounds", type=int, default=5, help="host rounds measured (median)")
    parser.add_argument("--repeats", type=int, default=300, help="calls per signature latency (median)")
    parser.add_argument("--out", default="results/bench", help="folder for device_round.csv / .md")
    args = parser.parse_args()
    dataset = DataRecipe("fashion_mnist").load()
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="fedsim-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for label, form, one_block in CONFIGURATIONS:
            artifact = cache.build(ArtifactRecipe(MODELS[model], dataset.task, checkpoint_format=form))
            report = fedsim.inspect(artifact, dataset.task, repeats=args.repeats)
            lat = report.latency_ms
            runner = Runner(artifact)
            global_path = scratch / "global.ckpt"
            global_path.write_bytes(
                write_tfv1(read_checkpoint(runner.initial_checkpoint(scratch)), one_block=one_block)
            )
            restore = median_ms(lambda r=runner, g=global_path: r.restore(g), args.repeats)
            host = host_ms_per_device(artifact, dataset, args.devices, args.rounds, one_block)
            row = {
                "model": model,
                "configuration": label,
                "checkpoint_format": form,
                "global_layout": "one block" if one_block else "block per entry",
                "restore_ms": restore,
                "save_ms": lat["save"],
                "train_batch_ms": lat["train"],
                "infer_batch_ms": lat["infer"],
                "host_ms": host,
                "fixed_ms": restore + lat["save"] + host,
                "checkpoint_kib": report.checkpoint_bytes / 1024,
            }
            rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            print(", ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    table = pd.DataFrame(rows)
    before = table[table.configuration == "before"].set_index("model")["fixed_ms"]
    table["fixed_vs_before"] = [round(before[m] / f, 2) for m, f in zip(table.model, table.fixed_ms)]
    md = (
        f"fedsim device-round benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {psutil.cpu_count()} CPUs, "
        f"one thread, batch 32; host work over {args.devices} IID Fashion-MNIST devices "
        f"({60000 // args.devices} samples each), median of {args.rounds} rounds.\n"
        "fixed_vs_before: the fixed cost before divided by this row's (target: >= 2 for the default, packed, "
        "at 1000 devices)."
    )
    publish(table, args.out, "device_round", md)


if __name__ == "__main__":
    main()
