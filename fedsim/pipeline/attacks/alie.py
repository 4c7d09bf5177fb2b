"""alie: "A Little Is Enough" (Baruch et al. 2019): every attacker uploads mean - z * std of the honest
updates of the round, coordinate-wise, with z from the paper (n updates, m attackers,
s = floor(n / 2 + 1) - m, z = Phi^-1((n - s) / n)); --attack-scale, when given, replaces z. The
attackers need the honest updates, so the round's updates reach the server whole (as an order
statistic's do)."""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np

from fedsim.pipeline.attacks.base import AttackKind, register
from fedsim.strategies.base import Aggregate


def alie_z(n: int, m: int) -> float:
    s = math.floor(n / 2 + 1) - m
    return NormalDist().inv_cdf(min(max((n - s) / n, 1e-6), 1 - 1e-6))


@register
class ALIE(AttackKind):
    name = "alie"
    scale_help = "alie's z (default: the paper's)"
    takes_scale = True
    accumulate = "stack"
    needs_honest = True

    def server(self, aggregate: Aggregate, attackers: np.ndarray) -> Aggregate:
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
