"""Ditto (Li et al. 2021, "Ditto: Fair and Robust Federated Learning Through Personalization"): the
global model is trained as FedAvg; each device also keeps a personal model v (device state) and, after
its round's upload, trains it for the same epochs on min_v F_k(v) + lambda/2 ||v - w||^2, w the global
model it received: inside the artifact, with the proximal term's anchor read from the global checkpoint
(the `anchor` variant). Both trainings run on the phone and count on its clock; v is the device's
personal model (personalised evaluation). lambda = 0 is local training of v."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.core.instructions import ANCHOR, PROXIMAL, Instruction
from fedsim.core.settings import Section, setting
from fedsim.strategies.base import DevicePlan, State
from fedsim.strategies.fedavg import FedAvg

PERSONAL = "ditto.personal"  # the device's personal model v (flat, the artifact's layout), in its state


@dataclass(frozen=True)
class DittoParams(Section):
    # 0.1: among the values Li et al. tried on their benchmarks (0.05-2)
    ditto_lambda: float = setting(
        0.1, "Ditto: weight of lambda/2 ||v - w||^2 pulling the personal model v to w", least=0
    )


@dataclass(frozen=True)
class PersonalModel(Instruction):
    """After the round's upload is saved, train the device's personal model (from its state; the first
    time from the global model) toward the global one, and keep it."""

    key = "ditto_personal"
    needs = (PROXIMAL, ANCHOR)
    columns = ("ditto_lambda",)
    what = "Ditto's personal model"
    lam: float = 0.1

    def after_round(self, rnd: Any) -> None:
        start = self.personal_model(rnd) or rnd.global_path
        rnd.runner.restore(start, {"anchor": rnd.global_path})
        # the round's own batches again: with lambda = 0 this is the device's local training exactly
        epochs = rnd.epochs_again()
        rnd.train_epochs(epochs, {"mu": np.array(self.lam, np.float32)}, record=False)
        rnd.state.put(PERSONAL, rnd.saved())

    def personal_model(self, rnd: Any) -> Any:
        kept = rnd.state.get(PERSONAL)
        return None if kept is None else rnd.write(kept, "ditto")

    def record(self) -> dict[str, float]:
        return {"ditto_lambda": self.lam}


class Ditto(FedAvg):
    name = "ditto"
    Params = DittoParams
    instructions = (PersonalModel,)

    def plan(self, round_num: int, device_ids: Any, state: State) -> dict[int, DevicePlan]:
        return dict.fromkeys(device_ids, DevicePlan().given(PersonalModel(float(self.params.ditto_lambda))))

    def device_work(self, local_epochs: int) -> tuple[int, int]:
        return 2 * local_epochs, 2  # the personal model's epochs, restore and save after the round's own

    def personaliser(self) -> Instruction | None:
        return PersonalModel(float(self.params.ditto_lambda))
