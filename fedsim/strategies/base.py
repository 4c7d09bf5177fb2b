"""The Strategy interface: accepted device updates + the current global weights -> new global weights."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Weights = dict[str, np.ndarray]


@dataclass(frozen=True)
class Update:
    """One device's accepted update: its weights after local training and how many samples it used."""

    device_id: int
    weights: Weights
    samples: int


@dataclass(frozen=True)
class Partial:
    """A host's pre-summed share of a linear aggregate: sum_i c_i * w_i (float64), sum_i c_i, and i's count."""

    weighted_sum: Weights
    total_weight: float
    count: int


class Strategy(ABC):
    name: str = "strategy"
    # A linear strategy's new model is sum_i c_i * w_i / sum_i c_i with c_i = coefficient(samples_i).
    # Hosts then pre-sum their devices' weights, and one Partial per host crosses the network instead
    # of one checkpoint per device. Strategies that need every update keep linear = False.
    linear: bool = False

    @abstractmethod
    def aggregate(self, global_weights: Weights, updates: Sequence[Update]) -> Weights:
        """New global weights. `updates` is non-empty and already validated (finite, right shapes)."""

    def coefficient(self, samples: int) -> float:
        """c_i of a linear strategy; unused otherwise."""
        raise NotImplementedError(f"{type(self).__name__} is not linear")

    def aggregate_partials(self, global_weights: Weights, partials: Sequence[Partial]) -> Weights:
        """New global weights from the hosts' partials of a linear strategy."""
        raise NotImplementedError(f"{type(self).__name__} is not linear")
