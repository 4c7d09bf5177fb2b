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


# ---- numpy's default_rng(entropy).integers(2^k), the first draw only -----------------------------
# numpy.random.SeedSequence (pool of 4 uint32 words, hash mixing), PCG64 seeded from its state
# (XSL-RR, 128-bit LCG, emulated here in two uint64 halves), Lemire's bounded draw (exact for a
# power-of-two range: the low 32 bits of the first output, shifted). tests/test_compress.py checks
# it against numpy for many entropies; the constants are numpy's.
_M32 = np.uint64(0xFFFFFFFF)
_S16, _S32, _S58, _S64_1 = np.uint64(16), np.uint64(32), np.uint64(58), np.uint64(63)
_INIT_A, _MULT_A = np.uint64(0x43B0D7E5), np.uint64(0x931E8875)
_INIT_B, _MULT_B = np.uint64(0x8B51F9DD), np.uint64(0x58F38DED)
_MIX_L, _MIX_R = np.uint64(0xCA01F9DD), np.uint64(0x4973F715)
_PCG_HI, _PCG_LO = np.uint64(0x2360ED051FC65DA4), np.uint64(0x4385DF649FCCF645)
_ONE = np.uint64(1)


@njit(cache=True, nogil=True)
def _hashmix(value, h):
    value = (value ^ h) & _M32
    h = (h * _MULT_A) & _M32
    value = (value * h) & _M32
    return value ^ (value >> _S16), h


@njit(cache=True, nogil=True)
def _mix(x, y):
    r = ((_MIX_L * x) - (_MIX_R * y)) & _M32
    return r ^ (r >> _S16)


@njit(cache=True, nogil=True)
def _mul64(x, y):
    """The 128-bit product of two uint64s as (high, low)."""
    x0, x1, y0, y1 = x & _M32, x >> _S32, y & _M32, y >> _S32
    p00, p01, p10, p11 = x0 * y0, x0 * y1, x1 * y0, x1 * y1
    mid = (p00 >> _S32) + (p01 & _M32) + (p10 & _M32)
    return p11 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32), (p00 & _M32) | (mid << _S32)


@njit(cache=True, nogil=True)
def _pcg_step(sh, sl, ih, il):
    """state * multiplier + increment, mod 2^128."""
    h, lo = _mul64(sl, _PCG_LO)
    h = h + sh * _PCG_LO + sl * _PCG_HI
    low = lo + il
    return h + ih + (_ONE if low < lo else np.uint64(0)), low


@njit(cache=True, nogil=True)
def seeded_draw(words, shift):
    """default_rng(entropy).integers(2^(32 - shift)) for entropy given as its uint32 words (uint64
    array, numpy's coercion of the ints)."""
    pool = np.zeros(4, np.uint64)
    h = _INIT_A
    for i in range(4):
        pool[i], h = _hashmix(words[i] if i < words.size else np.uint64(0), h)
    for src in range(4):
        for dst in range(4):
            if src != dst:
                v, h = _hashmix(pool[src], h)
                pool[dst] = _mix(pool[dst], v)
    for src in range(4, words.size):
        for dst in range(4):
            v, h = _hashmix(words[src], h)
            pool[dst] = _mix(pool[dst], v)
    state = np.zeros(8, np.uint64)  # generate_state(4, uint64): 8 uint32 words, paired little-endian
    h = _INIT_B
    for i in range(8):
        v = (pool[i % 4] ^ h) & _M32
        h = (h * _MULT_B) & _M32
        v = (v * h) & _M32
        state[i] = v ^ (v >> _S16)
    seed_hi, seed_lo = state[0] | (state[1] << _S32), state[2] | (state[3] << _S32)
    inc_hi, inc_lo = state[4] | (state[5] << _S32), state[6] | (state[7] << _S32)
    inc_hi, inc_lo = (inc_hi << _ONE) | (inc_lo >> _S64_1), (inc_lo << _ONE) | _ONE
    sh, sl = _pcg_step(np.uint64(0), np.uint64(0), inc_hi, inc_lo)
    low = sl + seed_lo
    sh, sl = sh + seed_hi + (_ONE if low < sl else np.uint64(0)), low
    sh, sl = _pcg_step(sh, sl, inc_hi, inc_lo)
    sh, sl = _pcg_step(sh, sl, inc_hi, inc_lo)  # the first output's step
    x, rot = sh ^ sl, sh >> _S58
    out = (x >> rot) | (x << ((np.uint64(64) - rot) & _S64_1))
    return (out & _M32) >> np.uint64(shift)
