"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the devices' weights."""

from __future__ import annotations

from collections.abc import Sequence

from fedsim.strategies.aggregate import combine_partials, weighted_mean
from fedsim.strategies.base import Partial, Strategy, Update, Weights


class FedAvg(Strategy):
    name = "fedavg"
    linear = True

    def coefficient(self, samples: int) -> float:
        return float(samples)

    def aggregate(self, global_weights: Weights, updates: Sequence[Update]) -> Weights:
        return weighted_mean([u.weights for u in updates], [self.coefficient(u.samples) for u in updates])

    def aggregate_partials(self, global_weights: Weights, partials: Sequence[Partial]) -> Weights:
        return combine_partials(partials, {name: w.dtype for name, w in global_weights.items()})
