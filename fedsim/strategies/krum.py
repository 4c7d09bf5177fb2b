"""Krum and Multi-Krum (Blanchard et al. 2017).

Each update's score is the sum of its squared distances to its n - f - 2 nearest other updates;
Krum takes the update with the lowest score, Multi-Krum the mean of the m lowest (m = n - f by
default). f, the number of Byzantine updates assumed, defaults to the run's --byzantine share of the
selected devices (0 without one) and is lowered to n - 3 when a round has fewer updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from fedsim.context import RunContext
from fedsim.settings import Section, setting
from fedsim.strategies import robust
from fedsim.strategies.base import Aggregate, State, Strategy


@dataclass(frozen=True)
class KrumParams(Section):
    assumed_byzantine: int | None = setting(
        None,
        "Byzantine updates assumed per round by krum, multikrum, bulyan (default: --byzantine x selected)",
        least=0,
    )


@dataclass(frozen=True)
class MultiKrumParams(KrumParams):
    krum_m: int | None = setting(None, "updates multikrum averages (default n - f)", least=1)


class Krum(Strategy):
    name = "krum"
    Params = KrumParams
    accumulate = "stack"

    def bind(self, run: RunContext) -> Strategy:
        """assumed_byzantine filled in from the run: ceil(--byzantine x selected devices)."""
        if self.params.assumed_byzantine is not None:
            return self
        f = math.ceil(run.byzantine * run.per_round - 1e-9)
        return type(self)(replace(self.params, assumed_byzantine=int(f)))

    def chosen(self, n: int) -> tuple[int, int]:
        """(f, m) for a round of n updates."""
        f = min(self.params.assumed_byzantine or 0, max(n - 3, 0))
        return f, 1

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        assert aggregate.rows is not None
        n = len(aggregate.rows)
        if n < 3:  # no neighbourhood to score: the plain mean
            return aggregate.rows.mean(axis=0, dtype=np.float64).astype(weights.dtype), state
        f, m = self.chosen(n)
        mean, _ = robust.multi_krum(aggregate.rows, weights.astype(np.float64), f, m)
        return mean.astype(weights.dtype), state


class MultiKrum(Krum):
    name = "multikrum"
    Params = MultiKrumParams

    def chosen(self, n: int) -> tuple[int, int]:
        f, _ = super().chosen(n)
        m = self.params.krum_m if self.params.krum_m is not None else n - f
        return f, min(m, n)
