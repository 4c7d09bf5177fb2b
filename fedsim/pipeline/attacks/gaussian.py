"""gaussian: the device uploads w + N(0, scale^2) per coordinate, seeded by (seed, device, round) (scale 1)."""

from __future__ import annotations

import numpy as np

from fedsim.pipeline.attacks.base import AttackKind, register


@register
class Gaussian(AttackKind):
    name = "gaussian"
    default_scale = 1.0
    scale_help = "gaussian's standard deviation (1)"
    takes_scale = on_host = needs_global = True

    def upload(self, flat: np.ndarray, global_flat: np.ndarray, device_id: int, round_num: int) -> np.ndarray:
        assert self.scale is not None
        rng = np.random.default_rng([self.seed, device_id, round_num, 0x6A55])
        return (global_flat + self.scale * rng.standard_normal(global_flat.shape)).astype(np.float32)
