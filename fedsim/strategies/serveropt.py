"""A server optimiser on FedAvg's averaged update (FedJAX's `server_optimizer` argument): FedAvgM
(Hsu et al. 2019) and FedAdagrad, FedAdam, FedYogi (Reddi et al. 2021, Algorithm 2).

With d = mean_i(w_i) - w, the sample-weighted mean update (the pseudo-gradient's negative), each
optimiser keeps its state and steps w <- w + server_lr * step:
  sgdm (FedAvgM)  m = momentum * m + d;                           step = m
  adagrad         m = b1 * m + (1 - b1) * d;  v = v + d^2;         step = m / (sqrt(v) + tau)
  adam            m = b1 * m + (1 - b1) * d;  v = b2 * v + (1 - b2) * d^2
  yogi            m = b1 * m + (1 - b1) * d;  v = v - (1 - b2) * d^2 * sign(v - d^2)
m starts at 0 and v at tau^2 (the paper's v_{-1} >= tau^2), with no bias correction (as in the paper).
FedAvgM with momentum 0 and server_lr 1 is FedAvg. The state (m, v) is saved with every round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedsim.core.settings import Section, setting
from fedsim.strategies.base import Aggregate, State, Strategy

_STEP = "the server's step on the averaged update"


@dataclass(frozen=True)
class MomentumParams(Section):
    server_lr: float = setting(1.0, _STEP, above=0)
    server_momentum: float = setting(0.9, "momentum of the server's step (FedAvgM)", least=0, below=1)


# Reddi et al.'s defaults for the FedOpt family (their Table 4 sweeps around these), except FedAdagrad's
# server_lr: its v only grows, so 0.01 barely moves the model (0.44 test accuracy after 3 rounds of the
# default workload, 20 devices, seed 1, where FedAvg reaches 0.80); 0.1, the top of Reddi et al.'s
# grid for it, reaches 0.79 (fedsim's choice, from that comparison)
@dataclass(frozen=True)
class AdagradParams(Section):
    server_lr: float = setting(0.1, _STEP, above=0)
    beta1: float = setting(0.9, "first-moment decay of the server optimiser", least=0, below=1)
    tau: float = setting(1e-3, "adaptivity (added to sqrt(v)) of the server optimiser", above=0)


@dataclass(frozen=True)
class AdamParams(AdagradParams):
    server_lr: float = setting(0.01, _STEP, above=0)
    beta2: float = setting(0.99, "second-moment decay of fedadam / fedyogi", least=0, below=1)


class ServerOpt(Strategy):
    """FedAvg's mean update, stepped by the server optimiser `optimizer` (sgdm, adagrad, adam, yogi)."""

    optimizer: ClassVar[str] = "sgdm"

    def init(self, weights: np.ndarray) -> State:
        m = np.zeros(weights.shape, np.float64)
        if self.optimizer == "sgdm":
            return {"m": m}
        return {"m": m, "v": np.full(weights.shape, self.params.tau**2)}

    def resume_state(self, saved: State, weights: np.ndarray) -> State:
        if self.optimizer == "sgdm" and "momentum" in saved:
            # an earlier fedsim kept FedAvgM's momentum on w - mean (the other sign); same values
            saved = {"m": -saved["momentum"]}
        return super().resume_state(saved, weights)

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        p = self.params
        w = weights.astype(np.float64)
        d = aggregate.mean() - w
        if self.optimizer == "sgdm":
            m = p.server_momentum * state["m"] + d
            return (w + p.server_lr * m).astype(weights.dtype), {"m": m}
        m = p.beta1 * state["m"] + (1 - p.beta1) * d
        v, d2 = state["v"], d * d
        if self.optimizer == "adagrad":
            v = v + d2
        elif self.optimizer == "adam":
            v = p.beta2 * v + (1 - p.beta2) * d2
        else:  # yogi
            v = v - (1 - p.beta2) * d2 * np.sign(v - d2)
        return (w + p.server_lr * m / (np.sqrt(v) + p.tau)).astype(weights.dtype), {"m": m, "v": v}


class FedAvgM(ServerOpt):
    name = "fedavgm"
    Params = MomentumParams
    optimizer = "sgdm"


class FedAdagrad(ServerOpt):
    name = "fedadagrad"
    Params = AdagradParams
    optimizer = "adagrad"


class FedAdam(ServerOpt):
    name = "fedadam"
    Params = AdamParams
    optimizer = "adam"


class FedYogi(ServerOpt):
    name = "fedyogi"
    Params = AdamParams
    optimizer = "yogi"
