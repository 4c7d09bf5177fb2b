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


class Strategy(ABC):
    name: str = "strategy"

    @abstractmethod
    def aggregate(self, global_weights: Weights, updates: Sequence[Update]) -> Weights:
        """New global weights. `updates` is non-empty and already validated (finite, right shapes)."""
