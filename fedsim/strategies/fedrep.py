"""FedRep (Collins et al. 2021, "Exploiting Shared Representations for Personalized Federated
Learning"): each device keeps its head (partial sharing, fedsim.pipeline.personal) and trains in two
phases a round, the head alone for --head-epochs with the body frozen, then the body alone for the
local epochs with the head frozen (the `mask` variant's train: a gradient factor per weight); the
server averages the body as FedAvg."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsim.core.context import RunContext
from fedsim.core.instructions import MASK, Instruction
from fedsim.core.layers import personal_names
from fedsim.core.settings import Section, setting
from fedsim.strategies.base import DevicePlan, State
from fedsim.strategies.fedavg import FedAvg


@dataclass(frozen=True)
class FedRepParams(Section):
    # 1: PFLlib's plocal_epochs default, the setting of its benchmark table
    head_epochs: int = setting(1, "FedRep: epochs a round of the head alone, before the body's", least=1)


@dataclass(frozen=True, eq=False)
class HeadThenBody(Instruction):
    """Train the head alone for `head_epochs`, then the body alone for the round's epochs."""

    key = "head_then_body"
    needs = (MASK,)
    what = "FedRep's head-then-body schedule"
    head: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # 1 per head weight, name order
    head_epochs: int = 1

    def phases(self, rnd: Any, phases: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
        (epochs, extras), *later = phases
        return [
            (self.head_epochs, {**extras, "mask": self.head}),
            (epochs, {**extras, "mask": (1.0 - self.head).astype(np.float32)}),
            *later,
        ]


class FedRep(FedAvg):
    name = "fedrep"
    Params = FedRepParams
    personal_layers = "head"
    instructions = (HeadThenBody,)

    def __init__(self, params: Any = None, run: RunContext | None = None, **values: Any) -> None:
        super().__init__(params, **values)
        self.run = run

    def bind(self, run: RunContext) -> FedRep:
        return FedRep(self.params, run)

    def device_work(self, local_epochs: int) -> tuple[int, int]:
        return self.params.head_epochs + local_epochs, 1

    def plan(self, round_num: int, device_ids: Any, state: State) -> dict[int, DevicePlan]:
        if self.run is None:
            raise ValueError("fedrep needs the model's weights: bind it to a run")
        heads = set(personal_names(self.personal_layers or "head", self.run.layout, self.run.task.num_classes))
        head = np.array([name in heads for name, _ in self.run.layout], np.float32)
        plan = DevicePlan().given(HeadThenBody(head, self.params.head_epochs))
        return dict.fromkeys(device_ids, plan)
