"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the devices' weights."""

from __future__ import annotations

import numpy as np

from fedsim.strategies.base import Aggregate, State, Strategy


class FedAvg(Strategy):
    name = "fedavg"

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        return aggregate.mean().astype(weights.dtype), state
