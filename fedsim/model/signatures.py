"""The signature contract of the on-device artifact, as the TFLite on-device training guide defines it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedsim.core.instructions import ANCHOR, CAPABILITIES, CONTROL, MASK, PROXIMAL

TRAIN = "train"  # train(x, y) -> {"loss"}
INFER = "infer"  # infer(x) -> {"output"}
SAVE = "save"  # save(checkpoint_path) -> {"checkpoint_path"}; writes a TF v1 checkpoint
RESTORE = "restore"  # restore(checkpoint_path) -> {weight name: tensor}; reads and assigns
SIGNATURES = (TRAIN, INFER, SAVE, RESTORE)

MU = "mu"  # the proximal variant's train(x, y, mu): weight of the proximal term
MASK_INPUT = "mask"  # the mask variant's train(..., mask): a gradient factor per weight, in name order
ANCHOR_PATH = "anchor_path"  # the anchor variant's restore(checkpoint_path, anchor_path)

CONTROL_PATH = "control_path"  # the scaffold variant's restore(checkpoint_path, control_path)
CORRECTION = "fedsim/correction"  # the tensor of a control file: c - c_i, packed like the weights

# Artifact variants: what `train` and `restore` honour beyond the guide's contract, named by the
# capabilities of fedsim.core.instructions and joined with "+" ("anchor+proximal"):
#   proximal  train(x, y, mu) adds mu/2 ||w - anchor||^2 (FedProx, Li et al. 2020); restore sets the
#             anchor to the restored weights
#   anchor    restore(checkpoint_path, anchor_path) sets the anchor from its own checkpoint (Ditto's
#             personal model trained toward the global one, Li et al. 2021); needs proximal
#   control   restore(checkpoint_path, control_path) reads a correction c - c_i (one float32 tensor
#             CORRECTION, every weight back to back in name order, as a packed checkpoint) that train
#             adds to every gradient (SCAFFOLD, Karimireddy et al. 2020)
#   mask      train(x, y, mask) multiplies each weight's gradient by its factor (one per weight, in
#             name order): 0 freezes a weight for the step (FedRep's head, then body, Collins et al. 2021)
VARIANTS = tuple(CAPABILITIES)
ALIASES = {"fedprox": PROXIMAL, "scaffold": CONTROL}  # the names of fedsim 0.3's two variants


def capabilities(variant: str | None) -> frozenset[str]:
    """The capabilities a variant name asks for ("anchor+proximal"; "fedprox", "scaffold": fedsim 0.3's)."""
    if not variant:
        return frozenset()
    parts = {ALIASES.get(p, p) for p in variant.split("+")}
    unknown = sorted(parts - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown artifact capability {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if ANCHOR in parts and PROXIMAL not in parts:
        raise ValueError("the anchor capability needs the proximal one (the anchor is the proximal term's)")
    return frozenset(parts)


def variant_of(needs: Iterable[str]) -> str | None:
    """The variant name that honours every capability in `needs` (None: the guide's artifact)."""
    parts = set(needs)
    if ANCHOR in parts:
        parts.add(PROXIMAL)
    return "+".join(sorted(parts)) or None


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
    train, restore = set(train_inputs), set(restore_inputs)
    out = set()
    for present, capability in (
        (MU in train, PROXIMAL),
        (MASK_INPUT in train, MASK),
        (CONTROL_PATH in restore, CONTROL),
        (ANCHOR_PATH in restore, ANCHOR),
    ):
        if present:
            out.add(capability)
    return frozenset(out)


def honours_of_report(report: Mapping[str, Any]) -> frozenset[str]:
    """The same, from an artifact report (artifact.json's `signatures`)."""
    signatures = report.get("signatures") or {}

    def names(signature: str) -> list[str]:
        return [d["name"] for d in signatures.get(signature, {}).get("inputs", [])]

    return honours(names(TRAIN), names(RESTORE))
