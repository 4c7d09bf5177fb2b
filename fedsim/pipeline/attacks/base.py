"""What a Byzantine attack is: how its devices train (instructions in their plans), what their uploads
become on their phone (`upload`), what it does with the round's updates on the server (`server`,
for attacks that read the honest updates), and what it needs (the global model, every update)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedsim.core.instructions import Instruction
from fedsim.strategies.base import Aggregate, DevicePlan

REGISTERED: dict[str, type[AttackKind]] = {}


class AttackKind:
    """One attack, named by its --attack value. `scale` is --attack-scale (None: its default)."""

    name: ClassVar[str] = ""
    default_scale: ClassVar[float | None] = None  # None: the attack takes no --attack-scale ...
    scale_help: ClassVar[str] = ""  # ... else what it means ("signflip's factor (4)")
    takes_scale: ClassVar[bool] = False
    on_host: ClassVar[bool] = False  # rewrites an attacker's upload on its device (`upload`)
    needs_global: ClassVar[bool] = False  # `upload` reads the global model
    accumulate: ClassVar[str | None] = None  # "stack": it reads every update of the round (`server`)
    needs_honest: ClassVar[bool] = False  # imitates honest devices: at least one must be left
    instructions: ClassVar[tuple[type[Instruction], ...]] = ()

    def __init__(self, scale: float | None = None, seed: int = 0, num_classes: int = 0) -> None:
        self.scale = scale if scale is not None else self.default_scale
        self.seed = seed
        self.num_classes = num_classes

    def plan(self, plan: DevicePlan) -> DevicePlan:
        """An attacker's plan (its role is set already)."""
        return plan

    def upload(self, flat: np.ndarray, global_flat: np.ndarray, device_id: int, round_num: int) -> np.ndarray:
        """What an attacker sends instead of its trained weights `flat` (float32)."""
        return flat

    def server(self, aggregate: Aggregate, attackers: np.ndarray) -> Aggregate:
        """The round's updates after the attackers' server-side move."""
        return aggregate


def register(cls: type[AttackKind]) -> type[AttackKind]:
    """Class decorator: the attack answers --attack from now on."""
    REGISTERED[cls.name] = cls
    return cls
