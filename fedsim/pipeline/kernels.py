"""Compiled loops for the codecs (numba): one or two passes over an update where numpy expressions
take a dozen, with the same float32 arithmetic operation for operation, so bytes and values are
identical to those expressions (fedsim/pipeline/reference.py writes them out; tests/test_compress.py compares).
Compiled on first use and cached on disk (numba's cache, beside this file or in NUMBA_CACHE_DIR)."""

from __future__ import annotations

import numpy as np
from numba import njit

# values are finite (fedsim.pipeline.verify refused the rest): no NaN or infinity checks in the loops;
# no other fast-math licence, so every sum and product rounds as numpy's does
FINITE = {"nnan", "ninf"}


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


@njit(cache=True, nogil=True, fastmath=FINITE)
def difference_range(a, base):
    """(min, max) of the float32 values a - base (no base: an empty array), without storing them."""
    if base.size == 0:
        lo = hi = a[0]
        for i in range(1, a.size):
            lo = min(lo, a[i])
            hi = max(hi, a[i])
        return lo, hi
    lo = hi = a[0] - base[0]
    for i in range(1, a.size):
        v = a[i] - base[i]
        lo = min(lo, v)
        hi = max(hi, v)
    return lo, hi


@njit(cache=True, nogil=True, fastmath=FINITE)
def levels_of_difference(a, base, lo, scale, noise, top, out):
    """out (uint8) = uint8(min(((a - base) - lo) * scale + noise, top)) (no base: an empty array); the
    value is >= 0, so the cast floors it."""
    top = np.float32(top)
    if base.size == 0:
        for i in range(a.size):
            out[i] = np.uint8(min((a[i] - lo) * scale + noise[i], top))
        return
    for i in range(a.size):
        out[i] = np.uint8(min(((a[i] - base[i]) - lo) * scale + noise[i], top))


@njit(cache=True, nogil=True)
def update_sample(a, base, carried, stride):
    """Every `stride`-th |(a - base) + carried| (float32; no carried: an empty array), as
    `residual_and_candidates` computes it: the sample top-k's threshold is drawn from."""
    sample = np.empty((a.size + stride - 1) // stride, np.float32)
    for j in range(sample.size):
        i = j * stride
        v = a[i] - base[i]
        if carried.size:
            v = v + carried[i]
        sample[j] = abs(v)
    return sample


@njit(cache=True, nogil=True)
def residual_and_candidates(a, base, carried, rest, decoded, threshold):
    """rest = (a - base) + carried (float32; no carried: an empty array; rest may be carried itself),
    decoded = base, in one pass that also keeps the indices of the values whose magnitude is at least
    `threshold`: (those indices, ascending, and their magnitudes)."""
    index = np.empty(rest.size, np.int64)
    count = 0
    for i in range(rest.size):
        v = a[i] - base[i]
        if carried.size:
            v = v + carried[i]
        rest[i] = v
        decoded[i] = base[i]
        if abs(v) >= threshold:
            index[count] = i
            count += 1
    return index[:count], magnitudes(rest, index[:count])


@njit(cache=True, nogil=True)
def at_least(values, threshold):
    """(the indices, ascending, of the values whose magnitude is at least `threshold`, those magnitudes)."""
    index = np.empty(values.size, np.int64)
    count = 0
    for i in range(values.size):
        if abs(values[i]) >= threshold:
            index[count] = i
            count += 1
    return index[:count], magnitudes(values, index[:count])


@njit(cache=True, nogil=True)
def magnitudes(values, index):
    """|values| at `index`, float32."""
    out = np.empty(index.size, np.float32)
    for j in range(index.size):
        out[j] = abs(values[index[j]])
    return out


@njit(cache=True, nogil=True)
def move_largest(candidates, magnitude, kth, k, rest, decoded):
    """Of the candidates, those whose magnitude is above `kth` and, of those equal to it, the first,
    k in all, moved from rest onto decoded: (their indices as uint32, their values)."""
    ties = k
    for j in range(magnitude.size):
        if magnitude[j] > kth:
            ties -= 1
    index = np.empty(k, np.uint32)
    values = np.empty(k, np.float32)
    taken = 0
    for j in range(magnitude.size):
        if magnitude[j] > kth or (magnitude[j] == kth and ties > 0):
            if magnitude[j] == kth:
                ties -= 1
            i = candidates[j]
            index[taken] = i
            values[taken] = rest[i]
            rest[i] = np.float32(0.0)
            decoded[i] = decoded[i] + values[taken]
            taken += 1
    return index, values
