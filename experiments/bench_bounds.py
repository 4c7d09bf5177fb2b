"""The lowest ratio a round could reach on this machine: the overhead benchmark's floors set against
what a round must do besides its devices' signature calls, each part measured with no fedsim code in
the way.

    python experiments/bench_bounds.py                    # against results/bench/overhead.csv
    python experiments/bench_bounds.py --overhead FILE.csv

A round must at least
1. run its devices' signature calls on min(hosts, CPUs) CPUs at once. The floor replays them on one
   CPU alone and divides by that count; `shared_cpus` is how much slower the same replay runs when
   every CPU replays its share at the same time (caches and memory shared): from the overhead run's
   own `shared_floor_s` where it has one (the same minutes as its floor and rounds), else measured
   here on the row's model with every device taking part;
2. hand the global checkpoint to its hosts and get one partial sum back from each, hosts doing
   nothing else, the cheaper of: Ray's round trip with the real sizes (the checkpoint put once, each
   host returning a float64 vector of the model's parameters), and the exchange fedsim uses between
   processes of one machine (the checkpoint written once to /dev/shm, a request per host over a Unix
   socket, each host's partial sum read back from a file);
3. read every device's upload once, to verify it: one copy of the checkpoint file from /dev/shm
   (preadv into a buffer kept between reads);
4. evaluate the global model on the test set where the row evaluates every round (the hosts' `infer`
   calls in their fixed blocks, spread over the CPUs).
Nothing else is counted (no tables, no per-device Python, no crc), so the true lowest ratio is higher:

    lowest_ratio = (floor_s x shared_cpus + round trip + devices per CPU x read_s + evaluate_s) / floor_s

where devices per CPU = ceil(per_round / min(hosts, CPUs)), as the floor divides. `numpy_ratio` also
counts what numpy needs at least to verify and sum each upload (crc32c and a float64 running sum),
timed alone, one file read again and again (its bytes stay in the caches). `host_ratio` counts instead
every pass a host makes over a device's data and upload besides the signature calls, timed right after
each device's calls in a replay of the floor's devices (the caches then hold the interpreter's working
set, as in a round): the device's batches (a permutation of its samples and their gather,
`batches_ms`) and its upload's one read, crc32c, finiteness check (a dot product) and float64 running
sum (`passes_ms`), numpy and crc32c alone. What a round measures above host_ratio is per-device Python
(driving the calls, the upload's stages, the device's report) and the coordinator's tables.
Writes results/bench/bounds.csv and bounds.md.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import bench_overhead  # this folder's: the floor's replay
import crc32c
import numpy as np
import pandas as pd
import psutil
import ray

import fedsim
from fedsim.checkpoint import read_checkpoint
from fedsim.checkpoint.tfv1 import cached_layout
from fedsim.data import DataRecipe
from fedsim.device import Device
from fedsim.engine.layout import test_blocks
from fedsim.report.tables import publish


def model_run(model: str, folder: Path) -> tuple[bytes, bytes]:
    """(.tflite, global checkpoint) of a real one-round run of `model` (toy data of the same 28x28 shape)."""
    run = fedsim.run(
        dataset="toy_images", toy_samples=10, devices=2, rounds=1, model=model, out=str(folder / model), progress=False
    )
    return (run.path / "model.tflite").read_bytes(), (run.path / "global.ckpt").read_bytes()


def replay(artifact: bytes, devices: int, ids: list[int], start: float) -> float:
    """Seconds in the signature calls of Fashion-MNIST devices `ids` (of `devices`, IID, round 2), replayed
    as the overhead benchmark's floor is (its settings); begins at `start` so that parallel replays overlap."""
    config = fedsim.Config(devices=devices, seed=0, local_epochs=1, batch_size=32)
    return bench_overhead.replay(artifact, config, [(2, ids)], start)[0]


def shared_cpus(artifact: bytes, devices: int, cpus: int, repeats: int = 3) -> float:
    """How much slower each CPU's share of the replay runs when all `cpus` replay at once than when one
    replays alone (median of `repeats`; the shares are the same devices both ways)."""
    ctx = multiprocessing.get_context("spawn")
    shares = [list(range(devices))[c::cpus] for c in range(cpus)]
    factors = []
    with ctx.Pool(cpus) as pool:
        for _ in range(repeats):
            alone = [pool.apply(replay, (artifact, devices, share, 0.0)) for share in shares]
            start = time.time() + 8.0  # every process has loaded its data and interpreter by then
            together = pool.starmap(replay, [(artifact, devices, share, start) for share in shares])
            factors.append(max(together) / max(alone))
    return float(np.median(factors))


def evaluation_s(artifact: bytes, checkpoint: bytes, cpus: int) -> float:
    """Seconds of one evaluation of the Fashion-MNIST test set in the hosts' blocks, on `cpus` CPUs
    (the busiest CPU's blocks; median of 5)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_evaluate, (artifact, checkpoint, cpus))


def _evaluate(artifact: bytes, checkpoint: bytes, cpus: int) -> float:
    from fedsim.device import Runner, evaluate_counts

    blocks = test_blocks(DataRecipe("fashion_mnist").load(), cpus)[0]
    runner = Runner(artifact)
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        f.write(checkpoint)
        f.flush()
        times = []
        for _ in range(5):
            start = time.perf_counter()
            evaluate_counts(runner, Path(f.name), blocks)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


@ray.remote(num_cpus=0)
class Host:
    """A host that does no device work: it takes the checkpoint and returns a partial sum."""

    def __init__(self, params: int) -> None:
        self.partial = np.zeros(params, np.float64)

    def run_round(self, checkpoint: bytes, device_ids: list[int]) -> np.ndarray:
        return self.partial


def ray_round_s(hosts: int, checkpoint: bytes, params: int, per_round: int, repeats: int = 200) -> float:
    """Median seconds of a round's Ray traffic: put the checkpoint, call every host, get the partials."""
    actors = [Host.remote(params) for _ in range(hosts)]
    ids = list(range(per_round))
    shares = [ids[h::hosts] for h in range(hosts)]
    times = []
    for i in range(repeats + 20):
        start = time.perf_counter()
        ref = ray.put(checkpoint)
        ray.get([a.run_round.remote(ref, share) for a, share in zip(actors, shares)])
        if i >= 20:  # after warm-up
            times.append(time.perf_counter() - start)
    for a in actors:
        ray.kill(a)
    return float(np.median(times))


def _socket_host(address: str, params: int) -> None:
    """A process that does no device work: for each request it reads the checkpoint file named in it
    and leaves a float64 partial sum in a file beside it, as a host on the coordinator's machine does."""
    from multiprocessing.connection import Client

    partial = np.zeros(params, np.float64)
    with Client(address) as conn:
        while (request := conn.recv()) is not None:
            checkpoint, out = request
            with open(checkpoint, "rb") as f:
                f.read()
            with open(out, "wb") as f:
                f.write(memoryview(partial).cast("B"))
            conn.send(out)


def exchange_round_s(hosts: int, checkpoint: bytes, params: int, repeats: int = 200) -> float:
    """Median seconds of a round's traffic the way fedsim moves it between processes of one machine
    (its exchange): the checkpoint written once to /dev/shm, a request to every host over a Unix
    socket, each host's partial sum read back from the file it wrote."""
    from multiprocessing.connection import Listener

    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    ctx = multiprocessing.get_context("spawn")
    times = []
    with Listener(str(folder / "sock"), "AF_UNIX") as listener:
        procs = [ctx.Process(target=_socket_host, args=(str(folder / "sock"), params)) for _ in range(hosts)]
        for proc in procs:
            proc.start()
        conns = [listener.accept() for _ in procs]
        try:
            for i in range(repeats + 20):
                start = time.perf_counter()
                path = folder / f"global-{i}.ckpt"
                path.write_bytes(checkpoint)
                for h, conn in enumerate(conns):
                    conn.send((str(path), str(folder / f"partial-{h}.bin")))
                for conn in conns:
                    out = Path(conn.recv())
                    np.fromfile(out, np.float64)
                    out.unlink()
                path.unlink()
                if i >= 20:  # after warm-up
                    times.append(time.perf_counter() - start)
        finally:
            for conn in conns:
                conn.send(None)
                conn.close()
            for proc in procs:
                proc.join()
    shutil.rmtree(folder, ignore_errors=True)
    return float(np.median(times))


def scatter(data: bytes, weights: np.ndarray) -> list[memoryview | bytearray]:
    """Buffers for one os.preadv of a checkpoint laid out as `data`: its floats land in `weights`
    (float32, in file order), the bytes around them in buffers of their own, as a host reads an upload."""
    read_checkpoint(data)  # parsed once: the layout of checkpoints of its size is then known
    layout = cached_layout(len(data))
    assert layout is not None and sum(count for _, _, count, _ in layout.tensors) == weights.size
    buffers: list[memoryview | bytearray] = []
    at, pos, floats = 0, 0, memoryview(weights).cast("B")
    for _, offset, count, _ in sorted(layout.tensors, key=lambda t: t[1]):
        buffers.extend([bytearray(offset - at), floats[pos : pos + 4 * count]])
        at, pos = offset + 4 * count, pos + 4 * count
    buffers.append(bytearray(len(data) - at))
    return buffers


def read_crc(path: str | os.PathLike[str], buffers: list[memoryview | bytearray]) -> int:
    """One scatter read of the file at `path` into `buffers`; the crc32c of its bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, buffers, 0)
    finally:
        os.close(fd)
    crc = 0
    for part in buffers:
        crc = crc32c.crc32c(part, crc)
    return crc


def upload_s(checkpoint: bytes, params: int, repeats: int = 2000) -> tuple[float, float]:
    """(one read of an upload from /dev/shm, that read plus crc32c and a float64 running sum): medians
    of reading one file again and again (its bytes stay in the caches)."""
    folder = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    path = folder / "device.ckpt"
    path.write_bytes(checkpoint)
    buffer = bytearray(len(checkpoint))
    weights = np.zeros(params, np.float32)
    buffers = scatter(checkpoint, weights)
    total = np.zeros(params, np.float64)
    reads, verified = [], []
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            fd = os.open(path, os.O_RDONLY)
            os.preadv(fd, [buffer], 0)
            os.close(fd)
            reads.append(time.perf_counter() - start)
            start = time.perf_counter()
            read_crc(path, buffers)
            np.add(total, weights, out=total)
            verified.append(time.perf_counter() - start)
    finally:
        path.unlink()
        folder.rmdir()
    return float(np.median(reads)), float(np.median(verified))


def host_passes_s(artifact: bytes, devices: int, ids: list[int], params: int) -> tuple[float, float]:
    """(the device's batches, the passes over its upload): per-device medians over Fashion-MNIST devices
    `ids` (of `devices`, IID, round 2) replayed as the floor is, each timed right after the device's
    signature calls (see the docstring's host_ratio). In a child process, as the floor's replays."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_host_passes, (artifact, devices, ids, params))


def _host_passes(artifact: bytes, devices: int, ids: list[int], params: int) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    weights = np.zeros(params, np.float32)
    total = np.zeros(params, np.float64)
    buffers: list[memoryview | bytearray] = []
    kept: list[np.ndarray] = []
    batches, passes = [], []

    def after(device: Device, upload: Path) -> None:
        if not buffers:
            buffers.extend(scatter(upload.read_bytes(), weights))
        start = time.perf_counter()
        order = rng.permutation(device.samples)
        kept[:] = [device.x[order], device.y[order]]
        middle = time.perf_counter()
        read_crc(upload, buffers)
        np.isfinite(np.dot(weights, weights))
        np.add(total, weights, out=total)
        batches.append(middle - start)
        passes.append(time.perf_counter() - middle)

    config = fedsim.Config(devices=devices, seed=0, local_epochs=1, batch_size=32)
    bench_overhead.replay(artifact, config, [(2, ids)], 0.0, after)
    return float(np.median(batches)), float(np.median(passes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overhead", default="results/bench/overhead.csv", help="an overhead benchmark's CSV")
    parser.add_argument("--out", default="results/bench", help="folder for bounds.csv / bounds.md")
    args = parser.parse_args()
    overhead = pd.read_csv(args.overhead)
    rows = overhead[overhead["ratio_target"].notna()]
    cpus = psutil.cpu_count() or 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, tuple[bytes, bytes, int]] = {}
    with tempfile.TemporaryDirectory() as runs:
        for model in sorted(set(rows["model"])):
            artifact, checkpoint = model_run(model, Path(runs))
            made[model] = (artifact, checkpoint, sum(int(w.size) for w in read_checkpoint(checkpoint).values()))
    fedsim.release()  # the runs' parked hosts would share the CPUs with what is measured next
    shared: dict[tuple[str, int], float] = {}
    passes: dict[str, tuple[float, float]] = {}  # by model: the host's per-device passes
    table = []
    for _, r in rows.iterrows():
        artifact, checkpoint, params = made[r["model"]]
        devices = 1000 if r["model"] == "mlp" else 100  # the fleet the model's replays take part in
        hosts, per_round = int(r["hosts"]), int(r["per_round"])
        used = min(hosts, cpus)
        if pd.notna(r.get("shared_floor_s")):  # measured in the overhead run itself, with its floor
            factor = float(r["shared_floor_s"]) / float(r["floor_s"])
        else:
            if (r["model"], used) not in shared:  # the full-participation share of the row's model
                shared[r["model"], used] = shared_cpus(artifact, devices, used) if used > 1 else 1.0
            factor = shared[r["model"], used]
        evaluate = evaluation_s(artifact, checkpoint, used) if int(r["eval_every"]) == 1 else 0.0
        ray_s = ray_round_s(hosts, checkpoint, params, per_round)
        exchange_s = exchange_round_s(hosts, checkpoint, params)
        transport_s = min(ray_s, exchange_s)  # the cheaper of the two ways fedsim moves a round
        read_s, verify_s = upload_s(checkpoint, params)
        if r["model"] not in passes:  # (the same for every row of the model)
            passes[r["model"]] = host_passes_s(artifact, devices, list(range(min(devices, 300))), params)
        batches_s, passes_s = passes[r["model"]]
        per_cpu = math.ceil(per_round / used)
        floor = float(r["floor_s"])
        fixed = floor * factor + transport_s + evaluate
        lowest = (fixed + per_cpu * read_s) / floor
        table.append(
            {
                "row": r["row"],
                "per_round": per_round,
                "hosts": hosts,
                "checkpoint_kib": round(len(checkpoint) / 1024, 1),
                "floor_s": floor,
                "shared_cpus": round(factor, 3),
                "ray_round_ms": round(ray_s * 1e3, 3),
                "exchange_round_ms": round(exchange_s * 1e3, 3),
                "read_ms": round(read_s * 1e3, 4),
                "verify_sum_ms": round(verify_s * 1e3, 4),
                "evaluate_ms": round(evaluate * 1e3, 2),
                "lowest_ratio": round(lowest, 3),
                "numpy_ratio": round((fixed + per_cpu * verify_s) / floor, 3),
                "batches_ms": round(batches_s * 1e3, 4),
                "passes_ms": round(passes_s * 1e3, 4),
                "host_ratio": round((fixed + per_cpu * (batches_s + passes_s)) / floor, 3),
                "measured_ratio": r["ratio"],
                "ratio_target": r["ratio_target"],
                "target_reachable": bool(lowest <= r["ratio_target"]),
            }
        )
        print(", ".join(f"{k}={v}" for k, v in table[-1].items()), flush=True)
    frame = pd.DataFrame(table)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    md = (
        f"fedsim: the lowest ratio a round could reach, {stamp}, {cpus} CPUs, floors and measured ratios from "
        f"{args.overhead}; `python experiments/bench_bounds.py`. lowest_ratio counts only the CPUs' sharing "
        "(shared_cpus), the cheaper round trip (Ray's or the exchange's), one read of each upload and the "
        "evaluation (no tables, no per-device Python, no crc); numpy_ratio adds crc32c and a float64 running "
        "sum per upload (one file, read again and again); host_ratio instead every pass a host makes over a "
        "device's data (batches_ms) and upload (passes_ms: read, crc32c, finiteness, float64 sum), timed "
        "between a replay's signature calls. See the script's docstring."
    )
    publish(frame, out, "bounds", md)


if __name__ == "__main__":
    main()
