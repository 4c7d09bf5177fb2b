"""Adaptive federated optimisation (Reddi et al. 2021, Algorithm 2): FedAdagrad, FedAdam, FedYogi.

The pseudo-gradient is the mean update d = mean_i(w_i) - w (sample-weighted), then
  m = beta1 * m + (1 - beta1) * d
  v = v + d^2                                   (FedAdagrad)
  v = beta2 * v + (1 - beta2) * d^2             (FedAdam)
  v = v - (1 - beta2) * d^2 * sign(v - d^2)     (FedYogi)
  w = w + server_lr * m / (sqrt(v) + tau)
with m starting at 0 and v at tau^2 (the paper's v_{-1} >= tau^2), and no bias correction (as in
the paper). m and v are the server state, saved with every round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.strategies.base import Aggregate, State, Strategy, check_param, in_unit, positive


@dataclass(frozen=True)
class FedOptParams:
    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        check_param(positive(self.server_lr), "server_lr", "must be a positive number", self.server_lr)
        check_param(in_unit(self.beta1), "beta1", "must be in [0, 1)", self.beta1)
        check_param(in_unit(self.beta2), "beta2", "must be in [0, 1)", self.beta2)
        check_param(positive(self.tau), "tau", "must be a positive number", self.tau)


class FedOpt(Strategy):
    Params = FedOptParams

    def init(self, weights: np.ndarray) -> State:
        return {"m": np.zeros(weights.shape, np.float64), "v": np.full(weights.shape, self.params.tau**2)}

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        p = self.params
        w = weights.astype(np.float64)
        d = aggregate.mean() - w
        m = p.beta1 * state["m"] + (1 - p.beta1) * d
        v = self.second_moment(state["v"], d * d)
        return (w + p.server_lr * m / (np.sqrt(v) + p.tau)).astype(weights.dtype), {"m": m, "v": v}


class FedAdagrad(FedOpt):
    name = "fedadagrad"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v + d2


class FedAdam(FedOpt):
    name = "fedadam"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.params.beta2 * v + (1 - self.params.beta2) * d2


class FedYogi(FedOpt):
    name = "fedyogi"

    def second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v - (1 - self.params.beta2) * d2 * np.sign(v - d2)
