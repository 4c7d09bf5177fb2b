"""ternary: TernGrad (Wen et al. 2017, "TernGrad: Ternary Gradients to Reduce Communication in
Distributed Deep Learning"): each value u_i of the update is sent as s * sign(u_i) * b_i, where
s = max_i |u_i| and b_i ~ Bernoulli(|u_i| / s), so E[s * sign(u_i) * b_i] = u_i (unbiased). The payload
is s (float32) and two bits a value (levels 0, 1, 2 for -1, 0, +1). One scale for the whole update (the
paper scales per layer; a model's update is one vector here). The Bernoulli draws are seeded by
(seed, device, round), so a device's encoding does not depend on which host runs it."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.pipeline import codecs
from fedsim.pipeline.base import Upload, UploadContext
from fedsim.pipeline.encodings.base import Codec, register


def ternarise(update: np.ndarray, uniforms: np.ndarray) -> bytes:
    """The payload of `update` (float32) given one uniform on [0, 1) per value."""
    u = np.asarray(update, np.float32)
    scale = np.float32(np.abs(u).max()) if len(u) else np.float32(0)
    keep = uniforms[: len(u)] * scale < np.abs(u)  # probability |u_i| / s
    levels = (np.sign(u) * keep + 1).astype(np.uint8)
    return scale.tobytes() + codecs.pack(levels, 2)


def deternarise(payload: bytes, count: int, onto: np.ndarray | None = None) -> np.ndarray:
    """The decoded update (plus `onto`, float32, if given), a new float32 array."""
    scale = np.frombuffer(payload[:4], np.float32)[0]
    out = (codecs.unpack(payload[4:], 2, count).astype(np.float32) - np.float32(1)) * scale
    if onto is not None:
        out += onto
    return out


@register
class Ternary(Codec):
    names = ("ternary",)

    def encode(self, up: Upload, ctx: UploadContext, settings: Any) -> tuple[bytes, np.ndarray]:
        assert up.flat is not None and ctx.global32 is not None
        draws = np.random.default_rng([ctx.seed, up.device_id, ctx.round_num, 0x7E2]).random(len(up.flat), np.float32)
        payload = ternarise(up.flat - ctx.global32, draws)
        return payload, deternarise(payload, len(up.flat), onto=ctx.global32)

    def nbytes(self, params: int, settings: Any) -> int:
        return 4 + -(-2 * params // 8)
