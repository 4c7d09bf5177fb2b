"""FedMedian (Yin et al. 2018): the coordinate-wise median of the updates (unweighted)."""

from __future__ import annotations

import numpy as np

from fedsim.strategies import robust
from fedsim.strategies.base import Aggregate, State, Strategy


class FedMedian(Strategy):
    name = "fedmedian"
    accumulate = "stack"

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        assert aggregate.rows is not None
        return robust.median(aggregate.rows).astype(weights.dtype), state
