"""FedAvgM (Hsu et al. 2019): server momentum on the pseudo-gradient.

  d = w - mean_i(w_i)   (the sample-weighted mean, FedAvg's model)
  v = beta * v + d
  w = w - server_lr * v
With server_momentum 0 and server_lr 1 it is FedAvg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.strategies.base import Aggregate, State, Strategy, check_param, in_unit, positive


@dataclass(frozen=True)
class FedAvgMParams:
    server_lr: float = 1.0
    server_momentum: float = 0.9

    def __post_init__(self) -> None:
        check_param(positive(self.server_lr), "server_lr", "must be a positive number", self.server_lr)
        check_param(in_unit(self.server_momentum), "server_momentum", "must be in [0, 1)", self.server_momentum)


class FedAvgM(Strategy):
    name = "fedavgm"
    Params = FedAvgMParams

    def init(self, weights: np.ndarray) -> State:
        return {"momentum": np.zeros(weights.shape, np.float64)}

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        p = self.params
        w = weights.astype(np.float64)
        v = p.server_momentum * state["momentum"] + (w - aggregate.mean())
        return (w - p.server_lr * v).astype(weights.dtype), {"momentum": v}
