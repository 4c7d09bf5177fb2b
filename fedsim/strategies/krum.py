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

from fedsim.core.context import RunContext
from fedsim.core.settings import ConfigError, Section, setting
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

    most_f_text = "n - 3"  # the largest f a round of n updates can assume

    def most_f(self, n: int) -> int:
        return max(n - 3, 0)

    def check_cohort(self, devices: int, per_round: int, byzantine: float) -> None:
        f = self.params.assumed_byzantine
        given = f is not None
        if f is None:
            f = math.ceil(byzantine * per_round - 1e-9)
        if f > self.most_f(per_round):
            how = f"--assumed-byzantine {f}" if given else f"--byzantine {byzantine} x {per_round} per round = {f}"
            raise ConfigError(
                f"--strategy {self.name} with {how} needs more than {per_round} updates a round "
                f"(f <= {self.most_f_text} = {self.most_f(per_round)}); use --assumed-byzantine "
                f"{self.most_f(per_round)} or select more devices"
            )
        m = getattr(self.params, "krum_m", None)
        if m is not None and m > per_round - f:
            raise ConfigError(
                f"--krum-m {m} exceeds the {per_round} - {f} = {per_round - f} updates a round leaves after "
                f"the {f} assumed Byzantine ones; use --krum-m {max(per_round - f, 1)} or less"
            )

    def chosen(self, n: int) -> tuple[int, int]:
        """(f, m) for a round of n updates."""
        # a round with fewer updates than planned (dropouts, availability): f lowered for it alone
        f = min(self.params.assumed_byzantine or 0, self.most_f(n))
        return f, 1

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        assert aggregate.rows is not None
        n = len(aggregate.rows)
        if n < 3:  # no neighbourhood to score: the plain mean
            self.selected = None
            return aggregate.rows.mean(axis=0, dtype=np.float64).astype(weights.dtype), state
        f, m = self.chosen(n)
        mean, chosen = robust.multi_krum(aggregate.rows, weights.astype(np.float64), f, m)
        self.selected = frozenset(int(d) for d in aggregate.device_ids[chosen])
        return mean.astype(weights.dtype), state


class MultiKrum(Krum):
    name = "multikrum"
    Params = MultiKrumParams

    def chosen(self, n: int) -> tuple[int, int]:
        f, _ = super().chosen(n)
        m = self.params.krum_m if self.params.krum_m is not None else n - f
        return f, min(m, n)
