"""Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the floor(trim * n) largest
and smallest values and average the rest (unweighted)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.strategies import robust
from fedsim.strategies.base import Aggregate, State, Strategy, check_param


@dataclass(frozen=True)
class TrimmedMeanParams:
    trim: float = 0.2  # share cut from each end; < 0.5

    def __post_init__(self) -> None:
        check_param(
            isinstance(self.trim, (int, float)) and 0 <= self.trim < 0.5, "trim", "must be in [0, 0.5)", self.trim
        )


class TrimmedMean(Strategy):
    name = "trimmedmean"
    Params = TrimmedMeanParams
    accumulate = "stack"

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        assert aggregate.rows is not None
        n = len(aggregate.rows)
        k = min(int(self.params.trim * n), (n - 1) // 2)
        return robust.trimmed_mean(aggregate.rows, k).astype(weights.dtype), state
