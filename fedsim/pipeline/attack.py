"""Byzantine devices: which devices attack (seeded, fixed for the run) and what their uploads become.

- signflip: the device uploads w - scale * (w_i - w) (its update reversed and scaled; scale 4 as in
  RSA, Li et al. 2019, so that a 20% minority cancels an honest majority's mean update);
- gaussian: w + N(0, scale^2) per coordinate, seeded by (seed, device, round) (scale 1);
- labelflip: the device trains through the same `train` signature on labels C - 1 - y;
- alie: "A Little Is Enough" (Baruch et al. 2019): every attacker uploads mean - z * std of the honest
  updates of the round, coordinate-wise, with z from the paper (n updates, m attackers,
  s = floor(n / 2 + 1) - m, z = Phi^-1((n - s) / n)); scale, when given, replaces z. The attackers
  need the honest updates, so the round's updates reach the server whole (as an order statistic's do).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

from fedsim.core.context import RunContext
from fedsim.core.instructions import Instruction
from fedsim.core.settings import ConfigError, Section, flag, setting
from fedsim.pipeline.base import ServerContext, Stage, Upload, UploadContext
from fedsim.strategies.base import HONEST, Aggregate, DevicePlan

ATTACKS = ("signflip", "gaussian", "labelflip", "alie")


@dataclass(frozen=True)
class FlipLabels(Instruction):
    """Train on C - 1 - y instead of y (a label-flipping attacker; C classes)."""

    key = "flip_labels"
    what = "flipped labels"
    classes: int = 0

    def labels(self, y: np.ndarray) -> np.ndarray:
        return (self.classes - 1 - y).astype(y.dtype)


DEFAULT_SCALE = {"signflip": 4.0, "gaussian": 1.0}


@dataclass(frozen=True)
class AttackSettings(Section):
    section = "attack"
    byzantine: float = setting(
        0.0, "share of devices (seeded, fixed for the run) that attack with --attack", least=0, below=1
    )
    attack: str | None = setting(None, "what the --byzantine devices do", choices=ATTACKS)
    attack_scale: float | None = setting(
        None, "signflip's factor (4), gaussian's standard deviation (1), or alie's z (default: the paper's)", above=0
    )

    def check(self) -> None:
        if self.attack is not None and self.byzantine <= 0:
            raise ConfigError(f"--byzantine must be above 0 with --attack {self.attack}, got {self.byzantine!r}")
        if self.attack is None and self.byzantine > 0:
            raise ConfigError(f"--byzantine {self.byzantine} needs --attack ({', '.join(ATTACKS)})")
        if self.attack_scale is not None and self.attack in (None, "labelflip"):
            raise ConfigError(
                f"{flag('attack_scale')} applies to --attack signflip, gaussian or alie, got {self.attack_scale!r}"
            )


def byzantine_devices(num_devices: int, fraction: float, seed: int) -> np.ndarray:
    """The ids of the round(fraction x devices) attacking devices, drawn once from the seed."""
    count = round(fraction * num_devices)
    rng = np.random.default_rng([seed, 0xB7A2])
    return np.sort(rng.choice(num_devices, size=count, replace=False)).astype(np.int64)


def alie_z(n: int, m: int) -> float:
    s = math.floor(n / 2 + 1) - m
    return NormalDist().inv_cdf(min(max((n - s) / n, 1e-6), 1 - 1e-6))


@dataclass
class Attack(Stage):
    name = "attack"
    Settings = AttackSettings
    where = "device"
    kind: str = "signflip"
    scale: float | None = None
    seed: int = 0
    fraction: float = 0.0
    attackers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    num_classes: int = 0
    instructions = (FlipLabels,)

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"--attack must be one of {', '.join(ATTACKS)}, got {self.kind!r}")
        self.accumulate = "stack" if self.kind == "alie" else None

    @classmethod
    def make(cls, settings: AttackSettings, seed: int = 0) -> Attack | None:
        if settings.attack is None:
            return None
        return cls(settings.attack, settings.attack_scale, seed, settings.byzantine)

    @property
    def needs_global(self) -> bool:  # type: ignore[override]
        return self.kind in DEFAULT_SCALE

    @property
    def on_host(self) -> bool:
        return self.kind in DEFAULT_SCALE

    def for_host(self) -> Attack:
        return dataclasses.replace(self, attackers=np.zeros(0, np.int64))  # hosts read roles from the plans

    def check_fleet(self, devices: int) -> None:
        count = len(byzantine_devices(devices, self.fraction, self.seed))
        if count == 0:
            raise ConfigError(
                f"--byzantine {self.fraction} of {devices} devices rounds to no attacker; "
                f"use at least --byzantine {1 / devices:.4g} (one device)"
            )
        if self.kind == "alie" and count >= devices:
            raise ConfigError(
                f"--attack alie needs honest devices to imitate, and --byzantine {self.fraction} of {devices} "
                f"devices makes every one an attacker; use at most --byzantine {(devices - 1) / devices:.4g}"
            )

    def bind(self, run: RunContext) -> None:
        self.attackers = byzantine_devices(run.devices, self.fraction, self.seed)
        self.num_classes = run.task.num_classes

    def plan(self, round_num: int, device_ids: Sequence[int], plans: dict[int, DevicePlan]) -> None:
        for d in np.intersect1d(self.attackers, device_ids).tolist():
            plan = dataclasses.replace(plans.get(d, DevicePlan()), role=self.kind)
            plans[d] = plan.given(FlipLabels(self.num_classes)) if self.kind == "labelflip" else plan

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        """What a signflip or gaussian attacker sends instead of its trained weights."""
        if up.plan.role == HONEST or self.kind not in DEFAULT_SCALE:
            return up
        assert up.flat is not None and ctx.global_flat is not None
        up.flat = self.corrupt(up.flat, ctx.global_flat, up.device_id, ctx.round_num)
        return up

    def corrupt(self, flat: np.ndarray, global_flat: np.ndarray, device_id: int, round_num: int) -> np.ndarray:
        scale = DEFAULT_SCALE[self.kind] if self.scale is None else self.scale
        if self.kind == "signflip":
            return (global_flat - scale * (flat.astype(np.float64) - global_flat)).astype(np.float32)
        rng = np.random.default_rng([self.seed, device_id, round_num, 0x6A55])
        return (global_flat + scale * rng.standard_normal(global_flat.shape)).astype(np.float32)

    def server(self, aggregate: Aggregate, ctx: ServerContext) -> Aggregate:
        if self.kind == "alie":
            return self.alie(aggregate, self.attackers)
        return aggregate

    def alie(self, aggregate: Aggregate, attackers: np.ndarray) -> Aggregate:
        """The aggregate with every attacker's row replaced by mean - z * std of the honest rows."""
        assert aggregate.rows is not None
        bad = np.isin(aggregate.device_ids, attackers)
        if not bad.any() or bad.all():
            return aggregate
        honest = aggregate.rows[~bad].astype(np.float64)
        z = alie_z(len(aggregate.rows), int(bad.sum())) if self.scale is None else self.scale
        rows = aggregate.rows.copy()
        rows[bad] = (honest.mean(axis=0) - z * honest.std(axis=0)).astype(np.float32)
        return dataclasses.replace(aggregate, rows=rows)
