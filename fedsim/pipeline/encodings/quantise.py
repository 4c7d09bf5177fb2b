"""qB (B in 1, 2, 4, 8): uniform stochastic quantisation (Suresh et al. 2017) to 2^B levels, unbiased,
B bits a value after an 8-byte header; --rotate first applies a random Hadamard rotation, and
--compress-entropy records the size an ideal entropy coder would give (entropy_bytes)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fedsim.pipeline import codecs
from fedsim.pipeline.base import Upload, UploadContext
from fedsim.pipeline.encodings.base import Codec, register


@register
class Quantise(Codec):
    names = ("q8", "q4", "q2", "q1")
    options = ("rotate", "compress_entropy")
    columns: ClassVar[dict[str, str]] = {"entropy_bytes": "compress_entropy"}

    def __init__(self, bits: int = 8) -> None:
        self.bits = bits

    @classmethod
    def parse(cls, text: str) -> Quantise | None:
        return cls(int(text[1:])) if text in cls.names else None

    def encode(self, up: Upload, ctx: UploadContext, settings: Any) -> tuple[bytes, np.ndarray]:
        # quantised as the loops subtract the global (no update array without rotation)
        assert up.flat is not None and ctx.global32 is not None
        signs = codecs.rotation(len(up.flat), ctx.seed, ctx.round_num)[1] if settings.rotate else None
        length = len(signs) if signs is not None else len(up.flat)
        noise = codecs.dither(length, ctx.seed, ctx.round_num, up.device_id)
        payload = codecs.quantise(up.flat, self.bits, noise, signs, base=ctx.global32)
        if settings.compress_entropy:
            up.metrics["entropy_bytes"] = float(codecs.entropy_bytes(payload, self.bits, length))
        return payload, codecs.dequantise(payload, self.bits, len(up.flat), signs, onto=ctx.global32)

    def nbytes(self, params: int, settings: Any) -> int:
        return codecs.quantised_bytes(params, self.bits, settings.rotate)
