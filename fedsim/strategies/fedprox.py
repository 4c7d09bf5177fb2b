"""FedProx (Li et al. 2020): each device minimises its loss + mu/2 * ||w - w_round_start||^2.

The proximal term lives in the artifact's `train` (the `fedprox` variant: `restore` also sets the
anchor weights, `train` takes mu as an input), so it runs on the device as a phone would run it. The
server side is FedAvg. mu = 0 gives FedAvg exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedsim.strategies.base import DevicePlan, State, check_param
from fedsim.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class FedProxParams:
    mu: float = 0.01

    def __post_init__(self) -> None:
        check_param(isinstance(self.mu, (int, float)) and self.mu >= 0, "mu", "must be >= 0", self.mu)


class FedProx(FedAvg):
    name = "fedprox"
    Params = FedProxParams
    variant = "fedprox"

    def plan(self, round_num: int, device_ids: Sequence[int], state: State) -> dict[int, DevicePlan]:
        return {d: DevicePlan(mu=float(self.params.mu)) for d in device_ids}
