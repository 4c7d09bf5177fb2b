"""Update compression on the device (--compress): what a device sends is an encoded update, decoded on
the server, and its bytes are the encoded payload's length (on the simulated clock and in bytes_up).

- none: the saved checkpoint as it is;
- bf16: the update w_i - w rounded to bfloat16 (round to nearest even; 8 exponent bits, so no update
  overflows), two bytes a parameter: the round trip pfl-research simulates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.pipeline.base import Stage, Upload, UploadContext
from fedsim.settings import Section, setting

METHODS = ("none", "bf16")


@dataclass(frozen=True)
class CompressSettings(Section):
    section = "compress"
    compress: str = setting("none", "how a device encodes its update for the uplink", choices=METHODS)


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> the upper 16 bits of the nearest bfloat16 (ties to even), as uint16."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    return (rounded >> 16).astype(np.uint16)


def from_bfloat16(half: np.ndarray) -> np.ndarray:
    """uint16 bfloat16 bits -> float32 (exact)."""
    return (half.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class Compress(Stage):
    name = "compress"
    Settings = CompressSettings
    where = "device"
    needs_global = True
    method: str = "bf16"

    @classmethod
    def make(cls, settings: CompressSettings, seed: int = 0) -> Compress | None:
        return None if settings.compress == "none" else cls(settings.compress)

    def encode(self, update: np.ndarray) -> bytes:
        """The payload a device sends for its update (float32 w_i - w)."""
        return to_bfloat16(update).tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        """The update the server reads back (float32)."""
        return from_bfloat16(np.frombuffer(payload, np.uint16))

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        assert up.flat is not None and ctx.global_flat is not None
        update = (up.flat.astype(np.float64) - ctx.global_flat).astype(np.float32)
        payload = self.encode(update)
        up.flat = (ctx.global_flat + self.decode(payload)).astype(np.float32)
        up.nbytes = len(payload)
        return up

    def upload_bytes(self, nbytes: int, params: int) -> int:
        return 2 * params
