"""The encodings of fedsim.pipeline.compress, each a pair encode(update) -> payload bytes and
decode(payload) -> update, so that what a device would send is real bytes and its length is the
upload's size. numpy, with the per-value loops compiled (fedsim.pipeline.kernels, numba).

- bf16 / fp16: the update rounded to bfloat16 (round to nearest even; 8 exponent bits, no overflow)
  or IEEE float16 (values beyond +-65504 clipped), two bytes a value.
- qB (B in 1, 2, 4, 8): uniform stochastic quantisation (Suresh et al. 2017, "Distributed Mean
  Estimation with Limited Communication"): 2^B levels between the update's min and max, each value
  rounded up with the probability of its fraction, packed B bits a value after an 8-byte header (min,
  max as float32). The dither (uniform on [0, 1), float32) is a window of a table drawn once per round,
  at an offset drawn per device: each value's dither is uniform and independent of the device's other
  values, and two devices share one only if their offsets coincide (probability 1 / table length), at
  the cost of one table per round instead of one draw per value per device. With rotation
  (--rotate), the update is first multiplied by a random +-1 diagonal and the normalised
  Walsh-Hadamard matrix (both seeded per round, known to the server), padded to a power of two, which
  spreads its values so min and max are closer together (Suresh et al., section 4).
- topk:F: the share F of the values largest in magnitude, as (uint32 index, float32 value) pairs after a
  4-byte count; with error feedback the rest is kept by the device and added to its next update.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType

import numpy as np

from fedsim.core import seeded


def _kernels() -> ModuleType:
    """fedsim.pipeline.kernels, imported on first use: numba costs ~0.4 s to import, which a run
    without compression never pays."""
    from fedsim.pipeline import kernels

    return kernels


# ---- two-byte floats -------------------------------------------------------------------------
def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> the upper 16 bits of the nearest bfloat16 (ties to even), as uint16."""
    out = np.empty(np.size(x), np.uint16)
    _kernels().bf16_encode(np.ascontiguousarray(x, np.float32).reshape(-1).view(np.uint32), out)
    return out


def from_bfloat16(half: np.ndarray, onto: np.ndarray | None = None) -> np.ndarray:
    """uint16 bfloat16 bits -> float32 (exact), plus `onto` (float32) if given; a new array."""
    if onto is not None and len(onto) != len(half):  # (the loop does not check bounds)
        raise ValueError(f"{len(half)} bfloat16 values onto {len(onto)}")
    out = np.empty(len(half), np.float32)
    _kernels().bf16_decode_onto(half, np.zeros(0, np.float32) if onto is None else onto, out)
    return out


def half_encode(method: str, update: np.ndarray) -> bytes:
    if method == "bf16":
        return to_bfloat16(update).tobytes()
    return np.clip(update, -65504, 65504).astype(np.float16).tobytes()


def half_decode(method: str, payload: bytes, onto: np.ndarray | None = None) -> np.ndarray:
    """The decoded update (plus `onto`, float32, if given), a new array."""
    if method == "bf16":
        return from_bfloat16(np.frombuffer(payload, np.uint16), onto)
    out = np.frombuffer(payload, np.float16).astype(np.float32)
    if onto is not None:
        out += onto
    return out


# ---- uniform stochastic quantisation ----------------------------------------------------------
# a group of `per` one-byte values (8 // per bits each) read as one little-endian word
_WORD: dict[int, np.dtype[np.unsignedinteger]] = {2: np.dtype("<u2"), 4: np.dtype("<u4")}


def pack(levels: np.ndarray, bits: int) -> bytes:
    """uint8 values < 2^bits, packed `bits` to a value, the first in the lowest bits (the last byte
    zero-padded). Each group of 8 // bits values is read as one little-endian word and its bytes'
    low bits shifted together, so the work is a few passes over the packed length."""
    if bits == 8:
        return levels.tobytes()
    if bits == 1:
        return np.packbits(levels, bitorder="little").tobytes()
    per = 8 // bits
    if len(levels) % per:
        padded = np.zeros(-(-len(levels) // per) * per, np.uint8)
        padded[: len(levels)] = levels
        levels = padded
    word = np.ascontiguousarray(levels).view(_WORD[per])
    out = word.copy()
    for j in range(1, per):
        out |= word >> (8 - bits) * j
    return out.astype(np.uint8).tobytes()


def unpack(data: bytes, bits: int, count: int) -> np.ndarray:
    raw = np.frombuffer(data, np.uint8)
    if bits == 8:
        return raw[:count]
    if bits == 1:
        return np.unpackbits(raw, count=count, bitorder="little")
    per = 8 // bits
    word = raw.astype(_WORD[per])
    out = word.copy()
    for j in range(1, per):
        out |= word << (8 - bits) * j
    out &= int.from_bytes(bytes([(1 << bits) - 1] * per), "little")
    return out.view(np.uint8)[:count]


def hadamard(x: np.ndarray) -> np.ndarray:
    """The normalised Walsh-Hadamard transform of a vector whose length is a power of two (its own
    inverse), in O(n log n): one butterfly pass over the whole array per level (float32, as a phone
    would compute it)."""
    y = np.array(x, np.float32)
    n = len(y)
    out = np.empty_like(y)
    h = 1
    while h < n:
        pairs, into = y.reshape(-1, 2, h), out.reshape(-1, 2, h)
        np.add(pairs[:, 0], pairs[:, 1], out=into[:, 0])
        np.subtract(pairs[:, 0], pairs[:, 1], out=into[:, 1])
        y, out = out, y
        h *= 2
    y *= np.float32(1 / np.sqrt(n))
    return y


def rotation(length: int, seed: int, round_num: int) -> tuple[int, np.ndarray]:
    """(padded length, random +-1 diagonal) of a round's rotation, shared by devices and server."""
    padded = 1 << max(int(length - 1).bit_length(), 0)
    signs = np.random.default_rng([seed, round_num, 0x40A]).choice(np.array([-1.0, 1.0], np.float32), padded)
    return padded, signs


@lru_cache(maxsize=2)
def _table(seed: int, round_num: int, length: int) -> np.ndarray:
    table = np.random.default_rng([seed, round_num, 0xD1]).random(length, np.float32)
    return np.concatenate([table, table])  # any window of `length` is a view


def dither_table_size(length: int) -> int:
    return 1 << max(int(length - 1).bit_length(), 16)


def dither(length: int, seed: int, round_num: int, device_id: int) -> np.ndarray:
    """A device's dither for a round: `length` uniforms on [0, 1), a window of the round's table."""
    bits = dither_table_size(length).bit_length() - 1
    offset = seeded.seeded_draw((seed, device_id, round_num, 0xC0), bits)  # default_rng(...).integers(2^bits)
    return _table(seed, round_num, 1 << bits)[offset : offset + length]


def quantise(
    update: np.ndarray, bits: int, noise: np.ndarray, signs: np.ndarray | None = None, base: np.ndarray | None = None
) -> bytes:
    """The payload of `update` (of `update - base`, float32, if given) quantised to 2^bits levels with
    dither `noise` (uniforms on [0, 1), at least as many as values: see dither()), rotated first when
    `signs` is given. Without rotation the difference is never stored: the loops compute it as they go."""
    u = np.asarray(update, np.float32)
    # (the compiled loops do not check bounds: sizes are checked here)
    if not len(u) or (base is not None and len(base) != len(u)):
        raise ValueError(f"cannot quantise {len(u)} values onto a base of {None if base is None else len(base)}")
    subtract = np.zeros(0, np.float32)  # what the loops subtract (nothing: an empty array)
    if base is not None and signs is not None:
        u = u - base
    elif base is not None:
        subtract = np.asarray(base, np.float32)
    if signs is not None:
        padded = np.zeros(len(signs), np.float32)
        padded[: len(u)] = u
        u = hadamard(padded * signs)
    kernels = _kernels()
    if len(noise) < len(u):
        raise ValueError(f"{len(noise)} dither values for {len(u)} values")
    lo, hi = (np.float32(v) for v in kernels.difference_range(u, subtract))
    top = (1 << bits) - 1
    out = np.zeros(8 + len(u), np.uint8)  # the header, then the levels (8 bits: the payload as it is)
    out[:8] = np.array([lo, hi], np.float32).view(np.uint8)
    if hi > lo:
        scale = np.float32(top / (float(hi) - float(lo)))
        kernels.levels_of_difference(u, subtract, lo, scale, noise[: len(u)], top, out[8:])
    return out.tobytes() if bits == 8 else out[:8].tobytes() + pack(out[8:], bits)


def dequantise(
    payload: bytes, bits: int, count: int, signs: np.ndarray | None = None, onto: np.ndarray | None = None
) -> np.ndarray:
    """The decoded update (plus `onto`, float32, if given), a new float32 array."""
    lo, hi = np.frombuffer(payload[:8], np.float32)
    length = len(signs) if signs is not None else count
    top = (1 << bits) - 1
    base = onto if onto is not None and signs is None else np.zeros(0, np.float32)
    if hi > lo:
        levels = unpack(payload[8:], bits, length)
        if len(levels) < length or len(base) not in (0, length):  # (the loop does not check bounds)
            raise ValueError(f"a payload of {len(levels)} values onto {len(base)} for {length} values")
        u = np.empty(length, np.float32)
        _kernels().dequantise_onto(levels, np.float32((float(hi) - float(lo)) / top), lo, base, u)
    else:
        u = np.full(length, lo, np.float32)
        if len(base):
            u += base
    if signs is not None:
        u = (hadamard(u) * signs)[:count]
        if onto is not None:
            u += onto
    return u


def quantised_bytes(count: int, bits: int, rotated: bool) -> int:
    length = (1 << max(int(count - 1).bit_length(), 0)) if rotated else count
    return 8 + -(-length * bits // 8)


def entropy_bytes(payload: bytes, bits: int, count: int) -> int:
    """The size an ideal entropy coder would give the levels (their empirical entropy), plus the header."""
    levels = unpack(payload[8:], bits, count)
    freq = np.bincount(levels, minlength=1 << bits) / max(count, 1)
    freq = freq[freq > 0]
    return 8 + int(np.ceil(-(freq * np.log2(freq)).sum() * count / 8))


# ---- top-k ------------------------------------------------------------------------------------
def largest(magnitude: np.ndarray, k: int) -> np.ndarray:
    """The indices (ascending, uint32) of the k largest values of `magnitude` (finite, >= 0); among equal
    values at the boundary, the lowest indices. A strided sample sets a threshold a little below the
    k-th largest value, so the exact selection runs over about 2k candidates instead of every value
    (all of them only when the sample misjudges)."""
    n = len(magnitude)
    if k >= n:
        return np.arange(n, dtype=np.uint32)
    sample = magnitude[:: max(1, n // 8192)]
    m = len(sample)
    rank = min(m, 2 * (k * m // n) + 16)
    threshold = np.partition(sample, m - rank)[m - rank]
    candidates = np.flatnonzero(magnitude >= threshold)
    if len(candidates) < k:
        candidates = np.arange(n)
    values = magnitude[candidates]
    kth = np.partition(values, len(values) - k)[len(values) - k]
    above = candidates[values > kth]
    ties = candidates[values == kth][: k - len(above)]
    return np.sort(np.concatenate([above, ties])).astype(np.uint32)


def topk_encode(update: np.ndarray, k: int) -> tuple[bytes, np.ndarray]:
    """(payload, the values not sent: update with the k largest magnitudes zeroed)."""
    k = min(k, len(update))
    index = largest(np.abs(update), k)
    rest = np.array(update, np.float32)
    values = rest[index]
    rest[index] = 0.0
    return np.uint32(k).tobytes() + index.tobytes() + values.tobytes(), rest


def topk_with_feedback(
    flat: np.ndarray, base: np.ndarray, carried: np.ndarray | None, k: int, rest: np.ndarray | None = None
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Top-k with error feedback in one pass over the model after a strided sample of it: (payload, what
    is kept: the update with the k values sent zeroed, the decoded update onto `base`), where the update
    is (flat - base) + carried (float32). The same bytes and values as topk_encode of that update, then
    topk_decode onto base (the tests compare); `rest`: the array to hold what is kept (a new one if None;
    `carried` itself: updated in place)."""
    n = len(flat)
    if not n or len(base) != n or (carried is not None and len(carried) != n):  # (the loops do not check)
        raise ValueError(f"top-k of {n} values onto {len(base)}, carrying {None if carried is None else len(carried)}")
    k = min(k, n)
    kernels = _kernels()
    rest = np.empty(n, np.float32) if rest is None else rest
    decoded = np.empty(n, np.float32)
    # a strided sample sets a threshold a little below the k-th largest magnitude, so the exact selection
    # runs over about 2k candidates (over every value only when the sample misjudged)
    carried = np.zeros(0, np.float32) if carried is None else carried
    sample = kernels.update_sample(flat, base, carried, max(1, n // 8192))
    m = len(sample)
    rank = min(m, 2 * (k * m // n) + 16)
    sample.partition(m - rank)  # (in place: the sample is this call's own)
    threshold = sample[m - rank] if k < n else np.float32(0)
    candidates, magnitude = kernels.residual_and_candidates(flat, base, carried, rest, decoded, threshold)
    if len(candidates) < k:
        candidates, magnitude = kernels.at_least(rest, np.float32(0))
    kth = np.partition(magnitude, len(magnitude) - k)[len(magnitude) - k]
    index, values = kernels.move_largest(candidates, magnitude, kth, k, rest, decoded)
    return np.uint32(k).tobytes() + index.tobytes() + values.tobytes(), rest, decoded


def topk_decode(payload: bytes, count: int) -> np.ndarray:
    k = int(np.frombuffer(payload[:4], np.uint32)[0])
    index = np.frombuffer(payload[4 : 4 + 4 * k], np.uint32)
    out = np.zeros(count, np.float32)
    out[index] = np.frombuffer(payload[4 + 4 * k : 4 + 8 * k], np.float32)
    return out
