"""Update compression on the device (--compress): what a device sends is an encoded update, decoded on
the server, and its bytes are the encoded payload's length: in checkpoint_bytes, bytes_up and the
upload's simulated seconds. The encodings are registered in fedsim.pipeline.encodings, one file each
(bf16 and fp16, stochastic quantisation qB, top-k with error feedback, ...); this stage knows none by
name.

--compress-down bf16|fp16 also rounds the model the server broadcasts: devices train from the rounded
model, and the downlink carries two bytes a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from fedsim.core.settings import ConfigError, Section, flag, setting
from fedsim.pipeline import codecs, encodings
from fedsim.pipeline.base import Stage, Upload, UploadContext
from fedsim.pipeline.encodings.base import Codec
from fedsim.strategies.base import State


@dataclass(frozen=True)
class CompressSettings(Section):
    section = "compress"
    compress: str = setting(
        "none", "how a device encodes its update for the uplink: " + encodings.said(["none", *encodings.names()])
    )
    rotate: bool = setting(False, "rotate the update (random Hadamard) before quantising it (qB)", switch=True)
    compress_down: str = setting(
        "none", "round the model the server broadcasts: none, bf16 or fp16", choices=("none", "bf16", "fp16")
    )
    compress_entropy: bool = setting(
        False, "also record each quantised upload's ideal entropy-coded size (entropy_bytes)", switch=True
    )

    def check(self) -> None:
        codec = encodings.parse(self.compress)
        for option in ("rotate", "compress_entropy"):
            if getattr(self, option) and (codec is None or option not in codec.options):
                takers = encodings.said(encodings.names(taking=option))
                raise ConfigError(f"{flag(option)} applies to --compress {takers}, got {self.compress}")


@dataclass
class Compress(Stage):
    name = "compress"
    after = ("ldp",)
    Settings = CompressSettings
    where = "device"
    needs_global = True
    settings: CompressSettings = field(default_factory=CompressSettings)
    seed: int = 0

    @classmethod
    def make(cls, settings: CompressSettings, seed: int = 0) -> Compress | None:
        if settings.compress == "none" and settings.compress_down == "none":
            return None
        return cls(settings, seed)

    @cached_property
    def codec(self) -> Codec | None:
        return encodings.parse(self.settings.compress)

    def device_table_columns(self) -> tuple[str, ...]:
        codec = self.codec
        on = codec.columns.items() if codec is not None else ()
        return tuple(column for column, option in on if getattr(self.settings, option))

    # ---- the uplink ---------------------------------------------------------------------------
    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        if self.codec is None:
            return up
        payload, decoded = self.codec.encode(up, ctx, self.settings)
        # decoded onto the float32 global: float32 + float32 rounds exactly as the float64 sum rounded to
        # float32 would (53 >= 2 * 24 + 2 bits)
        up.flat = decoded
        up.nbytes = len(payload)
        return up

    def upload_bytes(self, nbytes: int, params: int) -> int:
        return nbytes if self.codec is None else self.codec.nbytes(params, self.settings)

    # ---- the downlink -------------------------------------------------------------------------
    def broadcast(self, flat: np.ndarray) -> np.ndarray:
        """The model devices receive (rounded to two-byte floats with --compress-down)."""
        method = self.settings.compress_down
        if method == "none":
            return flat
        return codecs.half_decode(method, codecs.half_encode(method, flat))

    def download_bytes(self, nbytes: int, params: int) -> int:
        return nbytes if self.settings.compress_down == "none" else 2 * params

    # ---- run folders of earlier versions ----------------------------------------------------------
    def restore(self, state: State) -> None:
        """A server state saved by an earlier fedsim, which kept device state (top-k's residuals) on the
        coordinator: handed to the devices' state once (seed_states)."""
        self._legacy = self.codec.adopt(state) if self.codec is not None else {}

    def seed_states(self) -> dict[int, dict[str, np.ndarray]]:
        seeded, self._legacy = getattr(self, "_legacy", {}), {}
        return seeded
