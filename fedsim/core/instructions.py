"""Device instructions: what one device does in its round beyond plain training.

A strategy or a pipeline stage puts an instruction into a device's plan under the instruction's own
key (Flower's per-client config record; NVIDIA FLARE's task data), and the device carries it out
through the instruction's hooks, which live beside the issuer: FedProx's proximal term in
fedsim/strategies/fedprox.py, a label-flipping attacker's labels in its attack's file. The host and
the device loop call the hooks in turn and know no instruction by name.

An instruction may need the on-device runtime to honour something beyond the guide's four
signatures (a `train` input for the proximal weight, a `restore` input for SCAFFOLD's correction):
it says so in `needs`, the runtime says what it `honours`, and a run that asks for what its artifact
cannot honour is refused before round 1 (`refuse_unhonoured`). The names are the runtime contract's,
not a file format's: `train_inputs` and `restore_inputs` hand the runtime numpy arrays, and each
runtime feeds them to its own signatures (the TFLite runtime writes a correction to the control file
its `restore` reads).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fedsim.core.settings import ConfigError

# What a runtime may honour beyond the guide's contract (fedsim.model.signatures maps them to a
# TFLite artifact's signature inputs).
PROXIMAL = "proximal"  # train takes a proximal weight: mu/2 ||w - anchor||^2 is added to the loss
ANCHOR = "anchor"  # restore takes the proximal term's anchor apart from the weights (Ditto)
CONTROL = "control"  # restore takes a correction that train adds to every gradient (SCAFFOLD)
MASK = "mask"  # train takes one factor per weight tensor for its gradient (0 freezes it: FedRep)
CAPABILITIES = {
    PROXIMAL: "a proximal term in train (train(x, y, mu))",
    ANCHOR: "the proximal term's anchor read at restore (restore(checkpoint_path, anchor_path))",
    CONTROL: "a gradient correction read at restore (restore(checkpoint_path, control_path))",
    MASK: "a gradient factor per weight in train (train(x, y, mask))",
}


class Instruction:
    """One instruction to one device for one round. Subclasses set `key` (unique: the plan holds one
    instruction per key), `needs` (capabilities, see above), `columns` (the devices-table columns,
    numbers, that `record` fills) and override the hooks they use."""

    key: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ()
    columns: ClassVar[tuple[str, ...]] = ()
    what: ClassVar[str] = ""  # what it is, for messages ("FedProx's proximal term")

    def labels(self, y: np.ndarray) -> np.ndarray:
        """The labels the device trains on, given its own (shuffled) ones."""
        return y

    def restore_from(self, rnd: Any) -> Path | None:
        """The checkpoint the device restores instead of the global one (its personal layers merged
        in), or None. `rnd`: the device's round (fedsim.device.train.DeviceRound)."""
        return None

    def phases(self, rnd: Any, phases: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, dict[str, Any]]]:
        """The round's training as (epochs, what each train step takes besides the batch) in order,
        given the phases so far (one: the local epochs)."""
        return phases

    def after_round(self, rnd: Any) -> None:
        """Work on the device after its upload is saved (a personal model's own training)."""

    def personal_model(self, rnd: Any) -> Path | None:
        """The device's personal model as a checkpoint, for personalised evaluation (None: the global)."""
        return None

    def restore_inputs(self) -> dict[str, np.ndarray]:
        """Inputs the runtime's restore takes besides the checkpoint (by capability input name)."""
        return {}

    def train_inputs(self) -> dict[str, np.ndarray]:
        """Inputs every train step takes besides the batch (by capability input name)."""
        return {}

    def record(self) -> dict[str, float]:
        """Values of its `columns` for the device's row."""
        return {}

    def bytes_down(self) -> int:
        """Bytes it adds to what the device downloads this round."""
        return 0

    def bytes_up(self) -> int:
        """Bytes it adds to what the device uploads this round, when its update is accepted."""
        return 0


def refuse_unhonoured(
    issuers: Iterable[tuple[str, Iterable[type[Instruction]]]], honours: Iterable[str], runtime: str
) -> None:
    """ConfigError, in one line, when an issuer (a flag such as "--strategy fedprox") may give an
    instruction that needs what the runtime does not honour."""
    have = set(honours)
    for who, kinds in issuers:
        for kind in kinds:
            missing = [c for c in kind.needs if c not in have]
            if missing:
                said = "; ".join(CAPABILITIES.get(c, c) for c in missing)
                offers = ", ".join(sorted(have)) or "nothing beyond the guide's four signatures"
                raise ConfigError(
                    f"{who} asks each device for {kind.what or kind.key}, which needs {said}; {runtime} "
                    f"offers {offers}: let fedsim build the artifact (drop --artifact) or export one that honours it"
                )


def columns_of(kinds: Iterable[type[Instruction]]) -> list[str]:
    """The devices-table columns the given instructions record, each once, in order."""
    out: list[str] = []
    for kind in kinds:
        out += [c for c in kind.columns if c not in out]
    return out


def merged(instructions: Iterable[Instruction], hook: str) -> Mapping[str, np.ndarray]:
    """Every instruction's `hook()` inputs in one mapping."""
    out: dict[str, np.ndarray] = {}
    for ins in instructions:
        out.update(getattr(ins, hook)())
    return out
