"""Coordinate-wise trimmed mean (Yin et al. 2018): per coordinate, drop the floor(trim * n) largest
and smallest values and average the rest (unweighted)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.core.settings import Section, setting
from fedsim.strategies import robust
from fedsim.strategies.base import Aggregate, State, Strategy


@dataclass(frozen=True)
class TrimmedMeanParams(Section):
    trim: float = setting(0.2, "share of values cut from each end per coordinate", least=0, below=0.5)


class TrimmedMean(Strategy):
    name = "trimmedmean"
    Params = TrimmedMeanParams
    accumulate = "stack"

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        assert aggregate.rows is not None
        n = len(aggregate.rows)
        k = min(int(self.params.trim * n), (n - 1) // 2)
        return robust.trimmed_mean(aggregate.rows, k).astype(weights.dtype), state
