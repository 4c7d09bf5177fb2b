"""SCAFFOLD (Karimireddy et al. 2020), option II of the control-variate update.

On the device (the `scaffold` artifact variant): every local step uses g(y) + (c - c_i), with c - c_i
sent down as bytes in the device's plan and read by `restore` from its control file. Then, with x the
global weights, y_i the device's weights after its K_i steps (all its batches, or the budget a deadline
left it with --straggler partial) and eta the devices' learning rate:
  c_i+ = c_i - c + (x - y_i) / (K_i * eta)
  x    = x + server_lr * mean_i(y_i - x)        (unweighted over the round's devices, as in the paper)
  c    = c + (1 / N) * sum_i (c_i+ - c_i)       (N: every device of the fleet)
c_i+ is a function of what the device uploads (y_i) and what it was sent (c - c_i), so the server
computes it from the upload; the bytes of the device's control-variate upload are still counted. c and
every device's c_i are the server state: saved with every committed round, restored by --resume, and
independent of which host ran a device (a host restart loses nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.strategies.base import Aggregate, DevicePlan, State, Strategy, check_param, positive


@dataclass(frozen=True)
class ScaffoldParams:
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        check_param(positive(self.server_lr), "server_lr", "must be a positive number", self.server_lr)


@dataclass(frozen=True)
class LocalTraining:
    """What the devices do in a round, which SCAFFOLD's c_i+ needs: their learning rate and step counts."""

    lr: float
    batch_size: int
    local_epochs: int
    devices: int

    def steps(self, samples: np.ndarray, budgets: np.ndarray | None = None) -> np.ndarray:
        """Train steps each device ran: all its batches for every epoch, or its budget where the round
        cut it short (budget >= 0; -1: no budget)."""
        full = -(-np.asarray(samples, np.int64) // self.batch_size) * self.local_epochs
        if budgets is None or not len(budgets):
            return full
        budgets = np.asarray(budgets, np.int64)
        return np.where(budgets >= 0, np.minimum(full, budgets), full)


class Scaffold(Strategy):
    name = "scaffold"
    Params = ScaffoldParams
    accumulate = "stack"
    variant = "scaffold"

    def __init__(self, params: Any = None, local: LocalTraining | None = None, **values: Any) -> None:
        super().__init__(params, **values)
        self.local = local

    def bind(self, config: Any) -> Scaffold:
        local = LocalTraining(config.lr, config.batch_size, config.local_epochs, config.devices)
        return Scaffold(self.params, local)

    def _local(self) -> LocalTraining:
        if self.local is None:
            raise ValueError("scaffold needs the devices' learning rate and steps: bind it to a run config")
        return self.local

    def init(self, weights: np.ndarray) -> State:
        n = self._local().devices
        return {"c": np.zeros(weights.shape, np.float64), "c_devices": np.zeros((n, weights.size), np.float32)}

    def plan(self, round_num: int, device_ids: Sequence[int], state: State) -> dict[int, DevicePlan]:
        c, c_devices = state["c"], state["c_devices"]
        return {d: DevicePlan(control=(c - c_devices[d]).astype(np.float32).tobytes()) for d in device_ids}

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        assert aggregate.rows is not None
        local = self._local()
        x = weights.astype(np.float64)
        y = aggregate.rows.astype(np.float64)
        c, c_devices = state["c"], state["c_devices"].copy()
        ids = aggregate.device_ids
        steps = local.steps(aggregate.samples, aggregate.steps).astype(np.float64)
        c_i = c_devices[ids].astype(np.float64)
        c_plus = c_i - c + (x - y) / (steps * local.lr)[:, None]
        c_devices[ids] = c_plus.astype(np.float32)
        c_new = c + (c_plus - c_i).sum(axis=0) / local.devices
        x_new = x + self.params.server_lr * (y - x).mean(axis=0)
        return x_new.astype(weights.dtype), {"c": c_new, "c_devices": c_devices}
