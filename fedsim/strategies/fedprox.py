"""FedProx (Li et al. 2020): each device minimises its loss + mu/2 * ||w - w_round_start||^2.

The proximal term lives in the artifact's `train` (the `fedprox` variant: `restore` also sets the
anchor weights, `train` takes mu as an input), so it runs on the device as a phone would run it. The
server side is FedAvg. mu = 0 gives FedAvg exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedsim.core.settings import Section, setting
from fedsim.strategies.base import DevicePlan, State
from fedsim.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class FedProxParams(Section):
    # 0.01: among the values FedProx's authors tried (0.001-1), the one in their synthetic-data runs
    mu: float = setting(0.01, "weight of the proximal term mu/2 ||w - w_global||^2 in the devices' train", least=0)


class FedProx(FedAvg):
    name = "fedprox"
    Params = FedProxParams
    variant = "fedprox"

    def plan(self, round_num: int, device_ids: Sequence[int], state: State) -> dict[int, DevicePlan]:
        return {d: DevicePlan(mu=float(self.params.mu)) for d in device_ids}
