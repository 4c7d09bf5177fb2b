"""signflip: the device uploads w - scale * (w_i - w), its update reversed and scaled (scale 4 as in RSA,
Li et al. 2019, so that a 20% minority cancels an honest majority's mean update)."""

from __future__ import annotations

import numpy as np

from fedsim.pipeline.attacks.base import AttackKind, register


@register
class SignFlip(AttackKind):
    name = "signflip"
    default_scale = 4.0
    scale_help = "signflip's factor (4)"
    takes_scale = on_host = needs_global = True

    def upload(self, flat: np.ndarray, global_flat: np.ndarray, device_id: int, round_num: int) -> np.ndarray:
        assert self.scale is not None
        return (global_flat - self.scale * (flat.astype(np.float64) - global_flat)).astype(np.float32)
