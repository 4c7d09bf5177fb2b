"""Krum and Multi-Krum (Blanchard et al. 2017).

Each update's score is the sum of its squared distances to its n - f - 2 nearest other updates;
Krum takes the update with the lowest score, Multi-Krum the mean of the m lowest (m = n - f by
default). f, the number of Byzantine updates assumed, defaults to the run's --byzantine share of the
selected devices (0 without one) and is lowered to n - 3 when a round has fewer updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from fedsim.strategies import robust
from fedsim.strategies.base import Aggregate, State, Strategy, check_param


def _check_count(value: Any, name: str, least: int) -> None:
    check_param(
        value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= least),
        name,
        f"must be an integer >= {least}",
        value,
    )


@dataclass(frozen=True)
class KrumParams:
    # Byzantine updates assumed per round; None = the run's --byzantine share of the selected devices
    assumed_byzantine: int | None = None

    def __post_init__(self) -> None:
        _check_count(self.assumed_byzantine, "assumed_byzantine", 0)


@dataclass(frozen=True)
class MultiKrumParams(KrumParams):
    # updates averaged; None = n - f
    krum_m: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_count(self.krum_m, "krum_m", 1)


def assumed(params: Any, config: Any) -> Any:
    """Params with assumed_byzantine filled in from the run: ceil(--byzantine x selected devices)."""
    if params.assumed_byzantine is not None:
        return params
    f = math.ceil(getattr(config, "byzantine", 0.0) * config.devices_per_round - 1e-9)
    return replace(params, assumed_byzantine=int(f))


class Krum(Strategy):
    name = "krum"
    Params = KrumParams
    accumulate = "stack"

    def bind(self, config: Any) -> Strategy:
        return type(self)(assumed(self.params, config))

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
