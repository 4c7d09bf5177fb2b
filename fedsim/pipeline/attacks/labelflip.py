"""labelflip: the device trains through the same `train` signature on labels C - 1 - y."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedsim.core.instructions import Instruction
from fedsim.pipeline.attacks.base import AttackKind, register
from fedsim.strategies.base import DevicePlan


@dataclass(frozen=True)
class FlipLabels(Instruction):
    """Train on C - 1 - y instead of y (a label-flipping attacker; C classes)."""

    key = "flip_labels"
    what = "flipped labels"
    classes: int = 0

    def labels(self, y: np.ndarray) -> np.ndarray:
        return (self.classes - 1 - y).astype(y.dtype)


@register
class LabelFlip(AttackKind):
    name = "labelflip"
    instructions = (FlipLabels,)

    def plan(self, plan: DevicePlan) -> DevicePlan:
        return plan.given(FlipLabels(self.num_classes))
