"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the devices' weights."""

from __future__ import annotations

from collections.abc import Sequence

from fedsim.strategies.aggregate import weighted_mean
from fedsim.strategies.base import Strategy, Update, Weights


class FedAvg(Strategy):
    name = "fedavg"

    def aggregate(self, global_weights: Weights, updates: Sequence[Update]) -> Weights:
        return weighted_mean([u.weights for u in updates], [u.samples for u in updates])
