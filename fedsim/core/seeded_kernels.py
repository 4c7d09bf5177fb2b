"""numpy's seeded draws, compiled (numba): `default_rng(entropy)` followed by one of the calls below
gives the same numbers as numpy's SeedSequence -> PCG64 -> Generator, without building those three
Python objects (~50-100 us a draw), which is what the asynchronous loop's per-arrival draws cost.
Imported on first use by fedsim.core.seeded (numba costs ~0.4 s to import); tests/test_seeded.py
compares every function with numpy over many entropies.

SeedSequence: a pool of 4 uint32 words, hash mixing; PCG64 seeded from its state (XSL-RR output,
128-bit LCG emulated in two uint64 halves); the Generator's draws: doubles are the top 53 bits of an
output; bounded integers are Lemire's multiply-and-reject, over 32 bits (a buffered half of an
output, as numpy's next_uint32) when the range fits them. The constants are numpy's."""

from __future__ import annotations

import numpy as np
from numba import njit

_M32 = np.uint64(0xFFFFFFFF)
_S11, _S16, _S32, _S58, _S64_1 = np.uint64(11), np.uint64(16), np.uint64(32), np.uint64(58), np.uint64(63)
_INIT_A, _MULT_A = np.uint64(0x43B0D7E5), np.uint64(0x931E8875)
_INIT_B, _MULT_B = np.uint64(0x8B51F9DD), np.uint64(0x58F38DED)
_MIX_L, _MIX_R = np.uint64(0xCA01F9DD), np.uint64(0x4973F715)
_PCG_HI, _PCG_LO = np.uint64(0x2360ED051FC65DA4), np.uint64(0x4385DF649FCCF645)
_ONE, _ZERO = np.uint64(1), np.uint64(0)
_TO_DOUBLE = 1.0 / 9007199254740992.0  # 2^-53


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
    return h + ih + (_ONE if low < lo else _ZERO), low


@njit(cache=True, nogil=True)
def generator(words):
    """default_rng(entropy) for entropy given as its uint32 words (uint64 array, numpy's coercion of
    the ints): [state high, state low, increment high, increment low, has a buffered 32-bit half, it]."""
    pool = np.zeros(4, np.uint64)
    h = _INIT_A
    for i in range(4):
        pool[i], h = _hashmix(words[i] if i < words.size else _ZERO, h)
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
    sh, sl = _pcg_step(_ZERO, _ZERO, inc_hi, inc_lo)
    low = sl + seed_lo
    sh, sl = sh + seed_hi + (_ONE if low < sl else _ZERO), low
    sh, sl = _pcg_step(sh, sl, inc_hi, inc_lo)
    g = np.zeros(6, np.uint64)
    g[0], g[1], g[2], g[3] = sh, sl, inc_hi, inc_lo
    return g


@njit(cache=True, nogil=True)
def next64(g):
    """The next 64-bit output (step, then XSL-RR)."""
    g[0], g[1] = _pcg_step(g[0], g[1], g[2], g[3])
    x, rot = g[0] ^ g[1], g[0] >> _S58
    return (x >> rot) | (x << ((np.uint64(64) - rot) & _S64_1))


@njit(cache=True, nogil=True)
def next32(g):
    """numpy's next_uint32 for PCG64: the low half of an output, its high half kept for the next call."""
    if g[4]:
        g[4] = _ZERO
        return g[5]
    x = next64(g)
    g[4], g[5] = _ONE, x >> _S32
    return x & _M32


@njit(cache=True, nogil=True)
def bounded32(g, top):
    """An integer in [0, top] for 0 < top < 2^32 - 1 (numpy's buffered_bounded_lemire_uint32)."""
    excl = top + _ONE
    m = next32(g) * excl
    leftover = m & _M32
    if leftover < excl:
        threshold = (_M32 - top) % excl
        while leftover < threshold:
            m = next32(g) * excl
            leftover = m & _M32
    return m >> _S32


@njit(cache=True, nogil=True)
def seeded_draw(words, shift):
    """default_rng(entropy).integers(2^(32 - shift)): Lemire's draw over a power-of-two range is the
    low 32 bits of the first output, shifted."""
    return (next64(generator(words)) & _M32) >> np.uint64(shift)


@njit(cache=True, nogil=True)
def uniforms(words, n):
    """default_rng(entropy).random(n)."""
    g = generator(words)
    out = np.empty(n, np.float64)
    for i in range(n):
        out[i] = np.float64(next64(g) >> _S11) * _TO_DOUBLE
    return out


@njit(cache=True, nogil=True)
def top_bits(words, n, shift):
    """default_rng(entropy).integers(0, 2^(64 - shift), n) for 1 <= shift < 32: over a power-of-two
    range wider than 32 bits, Lemire's draw is an output's top bits and never rejects."""
    g = generator(words)
    out = np.empty(n, np.int64)
    for i in range(n):
        out[i] = np.int64(next64(g) >> np.uint64(shift))
    return out


@njit(cache=True, nogil=True)
def floyd(words, pop, size):
    """The positions default_rng(entropy).choice(pop, size, replace=False) picks, unordered (numpy's
    Floyd branch: pop <= 10,000 or size <= pop // 50; numpy then shuffles them, which changes no
    member of the set). Each step j draws in [0, j]; a value already taken gives way to j itself."""
    g = generator(words)
    taken = np.zeros(pop, np.bool_)
    out = np.empty(size, np.int64)
    for k in range(size):
        j = pop - size + k
        val = 0 if j == 0 else np.int64(bounded32(g, np.uint64(j)))
        if taken[val]:
            val = j
        taken[val] = True
        out[k] = val
    return out
