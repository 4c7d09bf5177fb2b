"""The seeded draws of device selection and the simulated clock: numpy's `default_rng(entropy)`
calls, or the same numbers compiled (fedsim.core.seeded_kernels) where a loop makes them once per
arrival (--mode async: a selection, an availability and a dropout draw and a tie-break each time a
slot frees). `compiled=False` is numpy itself, the reference; both give identical numbers
(tests/test_seeded.py), so a run's tables do not depend on which one drew them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import ModuleType

import numpy as np

FLOYD_MAX_POP = 10_000  # numpy's choice draws without replacement by Floyd's algorithm up to here
_WORD = 0xFFFFFFFF


def _kernels() -> ModuleType:
    """fedsim.core.seeded_kernels, imported on first use (numba costs ~0.4 s to import)."""
    from fedsim.core import seeded_kernels

    return seeded_kernels


def warm_up(also: Callable[[], object] | None = None) -> threading.Thread:
    """Load the compiled draws on a background thread (numba's import and its cached code take ~1-2 s
    here), started while the hosts start, so that the loop's first draw does not wait for them (a
    draw that comes first waits on the import lock, then numba's compiler lock: no race); `also`:
    another compiled loop the run will call, loaded next on the same thread."""

    def load() -> None:
        try:
            k, w = _kernels(), words(0)
            k.uniforms(w, 1), k.floyd(w, 2, 1), k.top_bits(w, 1, 2), k.seeded_draw(w, 0)
            if also is not None:
                also()
        except Exception:  # the loop's own first call raises it where it can be reported
            pass

    thread = threading.Thread(target=load, name="fedsim-seeded-warm-up", daemon=True)
    thread.start()
    return thread


def words(*ints: int) -> np.ndarray:
    """The uint32 words numpy's SeedSequence makes of non-negative ints (each little-endian; 0 is one word)."""
    out = []
    for x in ints:
        out.append(x & _WORD)
        x >>= 32
        while x:
            out.append(x & _WORD)
            x >>= 32
    return np.array(out, np.uint64)


def _can_compile(entropy: tuple[int, ...]) -> bool:
    return all(int(x) >= 0 for x in entropy)  # (numpy refuses negative entropy; let it say so)


def uniforms(entropy: tuple[int, ...], n: int, compiled: bool = False) -> np.ndarray:
    """default_rng(entropy).random(n)."""
    if compiled and _can_compile(entropy):
        return _kernels().uniforms(words(*entropy), n)
    return np.random.default_rng(list(entropy)).random(n)


def choice(entropy: tuple[int, ...], pop: int, size: int, compiled: bool = False) -> np.ndarray:
    """The positions default_rng(entropy).choice(pop, size, replace=False) picks, as a set (the
    compiled draw leaves out numpy's final shuffle: callers sort)."""
    floyd = pop <= FLOYD_MAX_POP or size <= pop // 50
    if compiled and floyd and 0 < size < pop < _WORD and _can_compile(entropy):
        return _kernels().floyd(words(*entropy), pop, size)
    return np.random.default_rng(list(entropy)).choice(pop, size=size, replace=False)


def top_bits(entropy: tuple[int, ...], n: int, bits: int = 62, compiled: bool = False) -> np.ndarray:
    """default_rng(entropy).integers(0, 2^bits, n), int64 (33 <= bits <= 63)."""
    if compiled and 32 < bits < 64 and _can_compile(entropy):
        return _kernels().top_bits(words(*entropy), n, 64 - bits)
    return np.random.default_rng(list(entropy)).integers(0, 2**bits, n)


def seeded_draw(entropy: tuple[int, ...], bits: int) -> int:
    """default_rng(entropy).integers(2^bits), 0 <= bits <= 32, compiled."""
    if _can_compile(entropy) and 0 <= bits <= 32:
        return int(_kernels().seeded_draw(words(*entropy), 32 - bits))
    return int(np.random.default_rng(list(entropy)).integers(1 << bits))
