"""The memory benchmarks' sampler: the PSS (shared pages counted once) of this process and every process
it started (the Ray session it owns: GCS, raylet, the hosts), every half second, so a benchmark can tell
each round's peak. Other programs on the machine, other Ray sessions included, are not counted."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import psutil


def pss_mb() -> float:
    """The PSS of this process and its descendants, in MB."""
    me = psutil.Process(os.getpid())
    total = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


class Sampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.perf_counter(), pss_mb()))
            self.stop.wait(0.5)

    def finish(self) -> None:
        self.stop.set()
        self.join()

    def per_round(self, began: float, elapsed_s: np.ndarray) -> list[float]:
        """The peak PSS (MB) within each round, the rounds ending `elapsed_s` after `began`."""
        samples = np.array(self.samples)
        out, start = [], began
        for end in began + np.asarray(elapsed_s):
            inside = samples[(samples[:, 0] >= start) & (samples[:, 0] <= end), 1]
            out.append(round(float(inside.max()), 1) if len(inside) else float("nan"))
            start = end
        return out
