"""Update compression on the device (--compress): what a device sends is an encoded update (the
codecs of fedsim.pipeline.codecs), decoded on the server, and its bytes are the encoded payload's
length: in checkpoint_bytes, bytes_up and the upload's simulated seconds.

  none          the saved checkpoint as it is
  bf16, fp16    the update in two-byte floats
  q8, q4, q2, q1  uniform stochastic quantisation to 2^B levels (Suresh et al. 2017; --rotate: after a
                random Hadamard rotation), unbiased
  topk:F        the share F of the largest values, with error feedback (the rest is added to the
                device's next update; kept only for the devices that have one)

--compress-down bf16|fp16 also rounds the model the server broadcasts: devices train from the rounded
model, and the downlink carries two bytes a parameter. --compress-entropy records, per device, the size
an ideal entropy coder would give a quantised update (entropy_bytes; the clock keeps the packed size).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedsim.core.settings import ConfigError, Section, setting
from fedsim.pipeline import codecs
from fedsim.pipeline.base import Stage, Upload, UploadContext
from fedsim.strategies.base import State

METHODS = ("none", "bf16", "fp16", "q8", "q4", "q2", "q1", "topk:F")
RESIDUAL = "compress.residual"  # a device's error-feedback residual, in its state


def parse_method(text: str) -> tuple[str, float]:
    """("q", bits) / ("topk", share) / (name, 0) of a --compress value; ConfigError otherwise."""
    if text in ("none", "bf16", "fp16"):
        return text, 0.0
    if text in ("q8", "q4", "q2", "q1"):
        return "q", float(text[1:])
    if text.startswith("topk:"):
        try:
            share = float(text[5:])
        except ValueError:
            share = -1.0
        if 0 < share <= 1:
            return "topk", share
    raise ConfigError(f"--compress must be one of {', '.join(METHODS)} (topk:F with 0 < F <= 1), got {text!r}")


@dataclass(frozen=True)
class CompressSettings(Section):
    section = "compress"
    compress: str = setting(
        "none", "how a device encodes its update for the uplink: none, bf16, fp16, q8, q4, q2, q1 or topk:F"
    )
    rotate: bool = setting(False, "rotate the update (random Hadamard) before quantising it (qB)", switch=True)
    compress_down: str = setting(
        "none", "round the model the server broadcasts: none, bf16 or fp16", choices=("none", "bf16", "fp16")
    )
    compress_entropy: bool = setting(
        False, "also record each quantised upload's ideal entropy-coded size (entropy_bytes)", switch=True
    )

    def check(self) -> None:
        kind, _ = parse_method(self.compress)
        if self.rotate and kind != "q":
            raise ConfigError(f"--rotate applies to --compress q8, q4, q2 or q1, got {self.compress}")
        if self.compress_entropy and kind != "q":
            raise ConfigError(f"--compress-entropy applies to --compress q8, q4, q2 or q1, got {self.compress}")


@dataclass
class Compress(Stage):
    name = "compress"
    Settings = CompressSettings
    where = "device"
    needs_global = True
    device_columns = ("entropy_bytes",)  # with --compress-entropy
    settings: CompressSettings = field(default_factory=CompressSettings)
    seed: int = 0

    @classmethod
    def make(cls, settings: CompressSettings, seed: int = 0) -> Compress | None:
        if settings.compress == "none" and settings.compress_down == "none":
            return None
        return cls(settings, seed)

    def device_table_columns(self) -> tuple[str, ...]:
        return self.device_columns if self.settings.compress_entropy else ()

    @property
    def kind(self) -> tuple[str, float]:
        return parse_method(self.settings.compress)

    # ---- the uplink ---------------------------------------------------------------------------

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        kind, arg = self.kind
        if kind == "none":
            return up
        assert up.flat is not None and ctx.global_flat is not None and ctx.global32 is not None
        if kind == "q":  # quantised as the loops subtract the global (no update array without rotation)
            bits = int(arg)
            signs = codecs.rotation(len(up.flat), ctx.seed, ctx.round_num)[1] if self.settings.rotate else None
            length = len(signs) if signs is not None else len(up.flat)
            noise = codecs.dither(length, ctx.seed, ctx.round_num, up.device_id)
            payload = codecs.quantise(up.flat, bits, noise, signs, base=ctx.global32)
            decoded = codecs.dequantise(payload, bits, len(up.flat), signs, onto=ctx.global32)
            if self.settings.compress_entropy:
                up.metrics["entropy_bytes"] = float(codecs.entropy_bytes(payload, bits, length))
        elif kind in ("bf16", "fp16"):
            payload = codecs.half_encode(kind, up.flat - ctx.global32)
            decoded = codecs.half_decode(kind, payload, onto=ctx.global32)
        else:  # top-k with error feedback
            update = up.flat - ctx.global32
            carried = up.state.get(RESIDUAL)  # what the device left out last time (error feedback)
            if carried is not None:
                update += carried
            payload, rest = codecs.topk_encode(update, max(1, round(arg * len(update))))
            decoded = codecs.topk_decode(payload, len(update))
            decoded += ctx.global32
            up.state.put(RESIDUAL, rest)
        # the decoded update onto the float32 global: float32 + float32 rounds exactly as the float64 sum
        # rounded to float32 would (53 >= 2 * 24 + 2 bits)
        up.flat = decoded
        up.nbytes = len(payload)
        return up

    def upload_bytes(self, nbytes: int, params: int) -> int:
        kind, arg = self.kind
        if kind in ("bf16", "fp16"):
            return 2 * params
        if kind == "q":
            return codecs.quantised_bytes(params, int(arg), self.settings.rotate)
        if kind == "topk":
            return 4 + 8 * min(max(1, round(arg * params)), params)
        return nbytes

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
        """A server state saved by an earlier fedsim, which kept each device's residual on the
        coordinator: handed to the devices' state once (seed_states)."""
        ids, rows = state.get("residual_ids"), state.get("residual_rows")
        if ids is not None and rows is not None:
            self._legacy = {int(d): {RESIDUAL: np.array(r, np.float32)} for d, r in zip(ids, rows)}

    def seed_states(self) -> dict[int, dict[str, np.ndarray]]:
        seeded, self._legacy = getattr(self, "_legacy", {}), {}
        return seeded
