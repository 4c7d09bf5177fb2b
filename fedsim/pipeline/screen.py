"""Screening on the server: a bound on each update's L2 norm ||w_i - w|| over all tensors, refusing
updates above --max-update-norm and scaling them down to --clip-update-norm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.core.settings import Section, setting
from fedsim.pipeline.base import Rejected, Stage, Upload, UploadContext


@dataclass(frozen=True)
class ScreenSettings(Section):
    section = "screen"
    max_update_norm: float | None = setting(
        None, "reject device updates farther than this (L2) from the global model", above=0
    )
    clip_update_norm: float | None = setting(
        None, "scale device updates down to this L2 norm before averaging", above=0
    )


@dataclass(frozen=True)
class Screen(Stage):
    name = "screen"
    after = ("secagg",)
    Settings = ScreenSettings
    where = "server"
    needs_global = True
    max_norm: float | None = None
    clip_norm: float | None = None

    @classmethod
    def make(cls, settings: ScreenSettings, seed: int = 0) -> Screen | None:
        if settings.max_update_norm is None and settings.clip_update_norm is None:
            return None
        return cls(settings.max_update_norm, settings.clip_update_norm)

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        assert up.flat is not None and ctx.global_flat is not None
        d = up.flat.astype(np.float64) - ctx.global_flat
        norm = float(np.sqrt(np.dot(d, d)))
        if self.max_norm is not None and norm > self.max_norm:
            raise Rejected(f"update norm {norm:.4g} exceeds --max-update-norm {self.max_norm:g}")
        if self.clip_norm is not None and norm > self.clip_norm:
            up.flat = (ctx.global_flat + d * (self.clip_norm / norm)).astype(up.flat.dtype)
            up.note = f"clipped: update norm {norm:.4g} scaled to --clip-update-norm {self.clip_norm:g}"
        return up
