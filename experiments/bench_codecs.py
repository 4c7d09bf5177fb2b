"""What one device's upload costs in each codec of --compress: the update encoded and decoded onto
the global model, as fedsim.pipeline.compress does it on a host, with the compiled loops
(fedsim.pipeline.kernels) against the same arithmetic as plain numpy expressions (the reference the
tests compare the kernels with, bit for bit).

    python experiments/bench_codecs.py [--repeats N] [--out results/bench]

101,770 values (the seed MLP), float32, a fixed seed; both variants alternate call by call and each
figure is the median of N calls. Writes results/bench/codecs.csv and codecs.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from fedsim.pipeline import codecs, reference
from fedsim.report.tables import publish

N = 101_770


def numpy_bf16(flat: np.ndarray, base: np.ndarray) -> np.ndarray:
    payload = reference.bf16_bits(flat - base).tobytes()
    decoded = reference.bf16_values(np.frombuffer(payload, np.uint16))
    return (base.astype(np.float64) + decoded).astype(np.float32)


def numpy_q(bits: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def run(flat: np.ndarray, base: np.ndarray) -> np.ndarray:
        payload = reference.quantise(flat - base, bits, reference.dither(N, 0, 3, 17))
        return (base.astype(np.float64) + reference.dequantise(payload, bits, N)).astype(np.float32)

    return run


def compiled_bf16(flat: np.ndarray, base: np.ndarray) -> np.ndarray:
    return codecs.half_decode("bf16", codecs.half_encode("bf16", flat - base), onto=base)


def compiled_q(bits: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def run(flat: np.ndarray, base: np.ndarray) -> np.ndarray:
        payload = codecs.quantise(flat, bits, codecs.dither(N, 0, 3, 17), base=base)
        return codecs.dequantise(payload, bits, N, onto=base)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    base = (rng.standard_normal(N) * 0.05).astype(np.float32)
    flat = base + (rng.standard_normal(N) * 1e-3).astype(np.float32)
    pairs = {"bf16": (numpy_bf16, compiled_bf16)} | {f"q{b}": (numpy_q(b), compiled_q(b)) for b in (8, 4, 2, 1)}
    rows = []
    for name, (expressions, compiled) in pairs.items():
        assert np.array_equal(expressions(flat, base), compiled(flat, base)), name  # also compiles the kernels
        times: dict[str, list[float]] = {"numpy": [], "compiled": []}
        for _ in range(args.repeats):
            for label, call in (("numpy", expressions), ("compiled", compiled)):
                start = time.perf_counter()
                call(flat, base)
                times[label].append(time.perf_counter() - start)
        numpy_ms, compiled_ms = (1000 * float(np.median(times[k])) for k in ("numpy", "compiled"))
        rows.append(
            {
                "codec": name,
                "numpy_ms": round(numpy_ms, 3),
                "compiled_ms": round(compiled_ms, 3),
                "speedup": round(numpy_ms / compiled_ms, 2),
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    header = (
        f"fedsim codec cost per device upload, {dt.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPUs, "
        f"`python experiments/bench_codecs.py --repeats {args.repeats}`: {N:,} float32 values encoded and "
        "decoded onto the global model; medians of alternating calls; identical results checked."
    )
    publish(table, args.out, "codecs", header)


if __name__ == "__main__":
    main()
