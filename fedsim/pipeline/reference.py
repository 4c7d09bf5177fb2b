"""The codecs as plain numpy expressions: what `fedsim.pipeline.kernels` compiles, operation for
operation. tests/test_compress.py requires the compiled codecs to give these bytes and values bit for
bit; experiments/bench_codecs.py times the compiled codecs against them. Not used by a run."""

from __future__ import annotations

import numpy as np

from fedsim.pipeline import codecs


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> the upper 16 bits rounded to nearest even (uint16)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)


def bf16_values(half: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits -> float32."""
    return (half.astype(np.uint32) << 16).view(np.float32)


def dither(length: int, seed: int, round_num: int, device_id: int) -> np.ndarray:
    """A device's dither window, its offset drawn by numpy's generator (the round's table is the one
    codecs.dither reads)."""
    size = codecs.dither_table_size(length)
    offset = int(np.random.default_rng([seed, device_id, round_num, 0xC0]).integers(size))
    return codecs._table(seed, round_num, size)[offset : offset + length]


def quantise(u: np.ndarray, bits: int, noise: np.ndarray) -> bytes:
    """Suresh et al.'s stochastic quantiser: levels between the min and the max, packed after an
    8-byte header (the min and max as float32)."""
    lo, hi = np.float32(u.min()), np.float32(u.max())
    top = (1 << bits) - 1
    levels = np.zeros(len(u), np.uint8)
    if hi > lo:
        scaled = np.subtract(u, lo, dtype=np.float32)
        scaled *= np.float32(top / (float(hi) - float(lo)))
        scaled += noise[: len(u)]
        levels = np.minimum(scaled, np.float32(top)).astype(np.uint8)
    return np.array([lo, hi], np.float32).tobytes() + codecs.pack(levels, bits)


def dequantise(payload: bytes, bits: int, count: int) -> np.ndarray:
    lo, hi = np.frombuffer(payload[:8], np.float32)
    if not hi > lo:
        return np.full(count, lo, np.float32)
    u = codecs.unpack(payload[8:], bits, count).astype(np.float32)
    u *= np.float32((float(hi) - float(lo)) / ((1 << bits) - 1))
    u += lo
    return u
