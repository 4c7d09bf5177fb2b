"""FedProx (Li et al. 2020): each device minimises its loss + mu/2 * ||w - w_round_start||^2.

The proximal term lives in the artifact's `train` (the `proximal` variant: `restore` also sets the
anchor weights, `train` takes mu as an input), so it runs on the device as a phone would run it. The
server side is FedAvg. mu = 0 gives FedAvg exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedsim.core.instructions import PROXIMAL, Instruction
from fedsim.core.settings import Section, setting
from fedsim.strategies.base import DevicePlan, State
from fedsim.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class FedProxParams(Section):
    # 0.01: among the values FedProx's authors tried (0.001-1), the one in their synthetic-data runs
    mu: float = setting(0.01, "weight of the proximal term mu/2 ||w - w_global||^2 in the devices' train", least=0)


@dataclass(frozen=True)
class Proximal(Instruction):
    """Train with the proximal term mu/2 ||w - w_restored||^2 (the artifact's train input `mu`)."""

    key = "proximal"
    needs = (PROXIMAL,)
    columns = ("mu",)
    what = "FedProx's proximal term"
    mu: float = 0.0

    def train_inputs(self) -> dict[str, np.ndarray]:
        return {"mu": np.array(self.mu, np.float32)}

    def record(self) -> dict[str, float]:
        return {"mu": self.mu}


class FedProx(FedAvg):
    name = "fedprox"
    Params = FedProxParams
    instructions = (Proximal,)

    def plan(self, round_num: int, device_ids: Sequence[int], state: State) -> dict[int, DevicePlan]:
        plan = DevicePlan().given(Proximal(float(self.params.mu)))
        return dict.fromkeys(device_ids, plan)
