"""topk:F: the share F of the values largest in magnitude, as (uint32 index, float32 value) pairs after
a 4-byte count, with error feedback: what was left out is kept as the device's state and added to its
next update (Stich et al. 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedsim.core.segments import aligned
from fedsim.pipeline import codecs
from fedsim.pipeline.base import Upload, UploadContext
from fedsim.pipeline.encodings.base import Codec, register

RESIDUAL = "compress.residual"  # a device's error-feedback residual, in its state


@register
class TopK(Codec):
    names = ("topk:F",)
    hint = "topk:F with 0 < F <= 1"

    def __init__(self, share: float = 0.01) -> None:
        self.share = share

    @classmethod
    def parse(cls, text: str) -> TopK | None:
        if not text.startswith("topk:"):
            return None
        try:
            share = float(text[5:])
        except ValueError:
            return None
        return cls(share) if 0 < share <= 1 else None

    def k(self, params: int) -> int:
        return min(max(1, round(self.share * params)), params)

    def encode(self, up: Upload, ctx: UploadContext, settings: Any) -> tuple[bytes, np.ndarray]:
        assert up.flat is not None and ctx.global32 is not None
        carried = up.state.own(RESIDUAL)  # what the device left out last time (error feedback)
        k = max(1, round(self.share * len(up.flat)))
        # the residual is updated where it lies when it is the device's own to change, else made in a
        # new page-aligned array (which the host writes to disk as it is)
        owned = carried is not None and carried.flags.writeable and len(carried) == len(up.flat)
        rest = carried if owned else aligned(4 * len(up.flat)).view(np.float32)
        payload, rest, decoded = codecs.topk_with_feedback(up.flat, ctx.global32, carried, k, rest)
        up.state.put(RESIDUAL, rest)
        return payload, decoded

    def nbytes(self, params: int, settings: Any) -> int:
        return 4 + 8 * self.k(params)

    def adopt(self, saved: dict[str, np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
        # fedsim 0.3 kept every device's residual in the server state (residual_ids, residual_rows)
        ids, rows = saved.get("residual_ids"), saved.get("residual_rows")
        if ids is None or rows is None:
            return {}
        return {int(d): {RESIDUAL: np.array(r, np.float32)} for d, r in zip(ids, rows)}
