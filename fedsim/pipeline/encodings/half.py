"""bf16 / fp16: the update rounded to bfloat16 (round to nearest even; 8 exponent bits, no overflow) or
IEEE float16 (values beyond +-65504 clipped), two bytes a value."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.pipeline import codecs
from fedsim.pipeline.base import Upload, UploadContext
from fedsim.pipeline.encodings.base import Codec, register


@register
class Half(Codec):
    names = ("bf16", "fp16")

    def __init__(self, kind: str = "bf16") -> None:
        self.kind = kind

    @classmethod
    def parse(cls, text: str) -> Half | None:
        return cls(text) if text in cls.names else None

    def encode(self, up: Upload, ctx: UploadContext, settings: Any) -> tuple[bytes, np.ndarray]:
        assert up.flat is not None and ctx.global32 is not None
        payload = codecs.half_encode(self.kind, up.flat - ctx.global32)
        return payload, codecs.half_decode(self.kind, payload, onto=ctx.global32)

    def nbytes(self, params: int, settings: Any) -> int:
        return 2 * params
