"""Compiled loops for the codecs (numba): one or two passes over an update where numpy expressions
take a dozen, with the same float32 arithmetic operation for operation, so bytes and values are
identical to those expressions (tests/test_compress.py keeps them as the reference and compares).
Compiled on first use and cached on disk (numba's cache, beside this file or in NUMBA_CACHE_DIR)."""

from __future__ import annotations

import numpy as np
from numba import njit

# values are finite (fedsim.pipeline.verify refused the rest): no NaN or infinity checks in the loops;
# no other fast-math licence, so every sum and product rounds as numpy's does
FINITE = {"nnan", "ninf"}


@njit(cache=True, nogil=True, fastmath=FINITE)
def levels(u, lo, scale, noise, top, out):
    """out (uint8) = floor(min((u - lo) * scale + noise, top)), the quantiser's levels."""
    for i in range(u.size):
        out[i] = min(np.int32((u[i] - lo) * scale + noise[i]), top)


@njit(cache=True, nogil=True, fastmath=FINITE)
def dequantise_onto(levels, step, lo, base, out):
    """out = (float32(levels) * step + lo) + base (no base: an empty array)."""
    if base.size == 0:
        for i in range(out.size):
            out[i] = np.float32(levels[i]) * step + lo
        return
    for i in range(out.size):
        out[i] = (np.float32(levels[i]) * step + lo) + base[i]


@njit(cache=True, nogil=True)
def bf16_encode(bits, out):
    """out = the upper 16 bits of float32 `bits` (as uint32) rounded to nearest even."""
    for i in range(bits.size):
        b = bits[i]
        out[i] = (b + 0x7FFF + ((b >> 16) & 1)) >> 16


@njit(cache=True, nogil=True)
def bf16_decode_onto(half, base, out):
    """out = float32(half << 16) + base (no base: an empty array; out is float32, written as bits)."""
    bits = out.view(np.uint32)
    for i in range(half.size):
        bits[i] = np.uint32(half[i]) << 16
    for i in range(base.size):
        out[i] = out[i] + base[i]
