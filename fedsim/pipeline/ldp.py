"""Local differential privacy: each device makes its own update differentially private before it
leaves the phone, trusting no server (--ldp-epsilon). The update w_i - w is clipped (L2 norm for the
Gaussian mechanism, L1 for Laplace, --ldp-clip C) and noise is added on the device, seeded per device
and round: replacing a device's whole update moves it by at most 2C, so
- gaussian: N(0, (z 2C)^2) per value, z the smallest multiplier for which one Gaussian release is
  (epsilon, --ldp-delta)-DP (the analytic Gaussian mechanism, by dp-accounting);
- laplace: Laplace(2C / epsilon) per value (pure epsilon-DP).
On a phone the noise costs microseconds: nothing on the simulated clock; rounds.parquet records the
noise's std (ldp_noise_std).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from fedsim.core.settings import Section, setting
from fedsim.pipeline.base import Stage, Upload, UploadContext

MECHANISMS = ("gaussian", "laplace")


@dataclass(frozen=True)
class LDPSettings(Section):
    section = "ldp"
    ldp_epsilon: float | None = setting(None, "local DP: each device's update is epsilon-DP on its own", above=0)
    ldp_delta: float = setting(1e-5, "local DP: delta of the Gaussian mechanism", above=0, below=1)
    ldp_mechanism: str = setting("gaussian", "local DP: gaussian (L2 clip) or laplace (L1 clip)", choices=MECHANISMS)
    ldp_clip: float = setting(1.0, "local DP: bound C on the update's norm (L2 for gaussian, L1 for laplace)", above=0)


def gaussian_multiplier(epsilon: float, delta: float) -> float:
    """The smallest z for which one Gaussian release with std z x sensitivity is (epsilon, delta)-DP:
    the analytic Gaussian mechanism (Balle and Wang 2018), as dp-accounting computes it."""
    from dp_accounting import gaussian_mechanism

    return float(gaussian_mechanism.get_sigma_gaussian(epsilon, delta))


@dataclass
class LDP(Stage):
    name = "ldp"
    after = ("dp",)
    Settings = LDPSettings
    where = "device"
    needs_global = True
    columns = ("ldp_noise_std",)
    settings: LDPSettings = field(default_factory=LDPSettings)
    seed: int = 0
    std: float = 0.0  # the noise's std per value

    def __post_init__(self) -> None:
        s = self.settings
        assert s.ldp_epsilon is not None
        sensitivity = 2 * s.ldp_clip
        if s.ldp_mechanism == "laplace":
            self.std = math.sqrt(2) * sensitivity / s.ldp_epsilon
        elif not self.std:
            self.std = gaussian_multiplier(s.ldp_epsilon, s.ldp_delta) * sensitivity

    @classmethod
    def make(cls, settings: LDPSettings, seed: int = 0) -> LDP | None:
        return None if settings.ldp_epsilon is None else cls(settings, seed)

    def for_host(self) -> LDP:
        return dataclasses.replace(self)

    def describe(self) -> dict[str, float | str]:
        return {"mechanism": self.settings.ldp_mechanism, "noise_std": self.std}

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        assert up.flat is not None and ctx.global32 is not None and ctx.global_flat is not None
        s = self.settings
        update = (up.flat - ctx.global32).astype(np.float64)
        norm = float(np.abs(update).sum() if s.ldp_mechanism == "laplace" else np.sqrt(np.dot(update, update)))
        if norm > s.ldp_clip:
            update *= s.ldp_clip / norm
        rng = np.random.default_rng([ctx.seed, up.device_id, ctx.round_num, 0x1D9])
        if s.ldp_mechanism == "laplace":
            noise = rng.laplace(0.0, 2 * s.ldp_clip / (s.ldp_epsilon or 1.0), update.shape)
        else:
            noise = rng.normal(0.0, self.std, update.shape)
        up.flat = (ctx.global_flat + update + noise).astype(np.float32)
        return up

    def round_metrics(self) -> dict[str, float]:
        return {"ldp_noise_std": self.std}
