"""The signature contract of the on-device artifact, as the TFLite on-device training guide defines it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedsim.core.instructions import CONTROL, PROXIMAL

TRAIN = "train"  # train(x, y) -> {"loss"}
INFER = "infer"  # infer(x) -> {"output"}
SAVE = "save"  # save(checkpoint_path) -> {"checkpoint_path"}; writes a TF v1 checkpoint
RESTORE = "restore"  # restore(checkpoint_path) -> {weight name: tensor}; reads and assigns
SIGNATURES = (TRAIN, INFER, SAVE, RESTORE)

MU = "mu"  # the fedprox variant's train(x, y, mu): weight of the proximal term

CONTROL_PATH = "control_path"  # the scaffold variant's restore(checkpoint_path, control_path)
CORRECTION = "fedsim/correction"  # the tensor of a control file: c - c_i, packed like the weights

# Artifact variants: what `train` computes besides the task's loss. "fedprox" (Li et al. 2020) adds
# mu/2 * ||w - w_restored||^2, with the anchor w_restored set by `restore`. "scaffold" (Karimireddy et
# al. 2020) adds the correction c - c_i to every gradient; `restore` also reads it from a control file
# (one float32 tensor CORRECTION, every weight back to back in name order, as a packed checkpoint).
VARIANTS = ("fedprox", "scaffold")

LOSS = "loss"
OUTPUT = "output"
CHECKPOINT_PATH = "checkpoint_path"

# How `save` lays the weights out in its checkpoint. "tensors": one tensor per weight, the guide's form
# (restore runs one Restore op per weight). "packed": every weight back to back in one float32 tensor
# named PACKED, so restore is one Restore op and builtin slices; the restore signature's outputs
# still name every weight with its shape, which is the layout (fedsim.checkpoint.unpack).
CHECKPOINT_FORMATS = ("packed", "tensors")
PACKED = "fedsim/packed"


def honours(train_inputs: Iterable[str], restore_inputs: Iterable[str]) -> frozenset[str]:
    """The capabilities (fedsim.core.instructions) an artifact whose train and restore signatures take
    these inputs honours: a proximal term (train's `mu`), a correction (restore's `control_path`)."""
    out = set()
    if MU in set(train_inputs):
        out.add(PROXIMAL)
    if CONTROL_PATH in set(restore_inputs):
        out.add(CONTROL)
    return frozenset(out)


def honours_of_report(report: Mapping[str, Any]) -> frozenset[str]:
    """The same, from an artifact report (artifact.json's `signatures`)."""
    signatures = report.get("signatures") or {}

    def names(signature: str) -> list[str]:
        return [d["name"] for d in signatures.get(signature, {}).get("inputs", [])]

    return honours(names(TRAIN), names(RESTORE))
