"""Byzantine devices: which devices attack (seeded, fixed for the run) and what their uploads become.

- signflip: the device uploads w - scale * (w_i - w) (its update reversed and scaled; scale 4 as in
  RSA, Li et al. 2019, so that a 20% minority cancels an honest majority's mean update);
- gaussian: w + N(0, scale^2) per coordinate, seeded by (seed, device, round) (scale 1);
- labelflip: the device trains through the same `train` signature on labels C - 1 - y;
- alie: "A Little Is Enough" (Baruch et al. 2019): every attacker uploads mean - z * std of the honest
  updates of the round, coordinate-wise, with z from the paper (n updates, m attackers,
  s = floor(n / 2 + 1) - m, z = Phi^-1((n - s) / n)); scale, when given, replaces z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from fedsim.strategies.base import Aggregate

ATTACKS = ("signflip", "gaussian", "labelflip", "alie")
DEFAULT_SCALE = {"signflip": 4.0, "gaussian": 1.0}


def byzantine_devices(num_devices: int, fraction: float, seed: int) -> np.ndarray:
    """The ids of the round(fraction x devices) attacking devices, drawn once from the seed."""
    count = int(round(fraction * num_devices))
    rng = np.random.default_rng([seed, 0xB7A2])
    return np.sort(rng.choice(num_devices, size=count, replace=False)).astype(np.int64)


def alie_z(n: int, m: int) -> float:
    s = math.floor(n / 2 + 1) - m
    return NormalDist().inv_cdf(min(max((n - s) / n, 1e-6), 1 - 1e-6))


@dataclass(frozen=True)
class Attack:
    kind: str
    scale: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"--attack must be one of {', '.join(ATTACKS)}, got {self.kind!r}")

    @property
    def on_host(self) -> bool:
        """Whether the host rewrites the attacker's upload (signflip, gaussian)."""
        return self.kind in DEFAULT_SCALE

    @property
    def needs_rows(self) -> bool:
        """Whether the attack reads the round's honest updates (every update then reaches the coordinator)."""
        return self.kind == "alie"

    def corrupt(self, flat: np.ndarray, global_flat: np.ndarray, device_id: int, round_num: int) -> np.ndarray:
        """The upload a signflip or gaussian attacker sends instead of its trained weights `flat`."""
        scale = DEFAULT_SCALE[self.kind] if self.scale is None else self.scale
        if self.kind == "signflip":
            return (global_flat - scale * (flat.astype(np.float64) - global_flat)).astype(np.float32)
        rng = np.random.default_rng([self.seed, device_id, round_num, 0x6A55])
        return (global_flat + scale * rng.standard_normal(global_flat.shape)).astype(np.float32)

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
        return Aggregate(
            aggregate.count,
            aggregate.total_weight,
            rows=rows,
            device_ids=aggregate.device_ids,
            samples=aggregate.samples,
            start_losses=aggregate.start_losses,
        )
