"""Partial sharing (--personal-layers PATTERN; FedPer, Arivazhagan et al. 2019; LG-FedAvg, Liang et al.
2020; FedRep, Collins et al. 2021): the weights the pattern names stay on the device. Each device
keeps its own values of them as device state and trains from the global shared part with its personal
part merged in; it sends only the shared part (its bytes up and down, and the clock's, are the shared
weights' payload), and the server averages only the shared part (the global model's personal part is
never updated: `settle`).

PATTERN is a glob over the weight names (`fedsim inspect` lists them: "mlp/hidden/*"), several
separated by commas; `head` names the final layer's weights, for any model: the layer whose every
weight ends in the model's output width (the classes, or the vocabulary). A pattern that names no
weight, or every weight, is refused (`local` keeps every weight on the device, and says so itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from fedsim.checkpoint.tfv1_write import write_tfv1
from fedsim.core.instructions import Instruction
from fedsim.core.layers import personal_names
from fedsim.core.settings import ConfigError, Section, setting
from fedsim.model.signatures import PACKED
from fedsim.pipeline.base import Stage, Upload, UploadContext
from fedsim.strategies.base import DevicePlan

if TYPE_CHECKING:
    from fedsim.core.context import RunContext
    from fedsim.strategies.base import Strategy

PERSONAL = "personal.layers"  # the device's own values of its personal weights, in its state
EVERY = "*"  # every weight personal: local training only (--strategy local)


@dataclass(frozen=True, eq=False)
class PersonalLayers(Instruction):
    """Restore the global model with this device's own values of the personal weights merged in (the
    first time: the global's), which is also its personal model."""

    key = "personal_layers"
    what = "personal layers"
    mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # over the flat weights

    def restore_from(self, rnd: Any) -> Any:
        kept = rnd.state.get(PERSONAL)
        if kept is None:
            return None
        flat = rnd.global_flat().copy()
        flat[self.mask] = kept
        return rnd.write(flat, "personal")

    def personal_model(self, rnd: Any) -> Any:
        return self.restore_from(rnd)


@dataclass(frozen=True)
class PersonalSettings(Section):
    section = "personal"
    personal_layers: str | None = setting(
        None,
        "weights that stay on each device (partial sharing: FedPer, LG-FedAvg): a glob over the weight "
        "names, or head (the final layer); default: the strategy's (fedper, fedrep: head)",
    )


@dataclass
class Personal(Stage):
    name = "personal"
    Settings = PersonalSettings
    where = "device"
    after = ("attack",)
    needs_global = True
    conflicts: ClassVar[dict[str, str]] = {
        "secagg": "--personal-layers with --secagg: a secure sum masks the whole model vector, and partial "
        "sharing sends part of it; they are not combined here"
    }
    pattern: str = "head"
    mask: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)
    shared_bytes: int = 0  # a device's upload and download: the shared weights' checkpoint
    names: list[str] = field(default_factory=list)
    instructions = (PersonalLayers,)

    @classmethod
    def make_for(cls, settings: PersonalSettings, seed: int, strategy: Strategy | None) -> Personal | None:
        pattern = settings.personal_layers or getattr(strategy, "personal_layers", None)
        return None if pattern is None else cls(pattern)

    def bind(self, run: RunContext) -> None:
        names = personal_names(self.pattern, run.layout, run.task.num_classes)
        every = len(names) == len(run.layout)
        if not names or (every and self.pattern != EVERY):
            what = "no weight" if not names else "every weight (that is --strategy local)"
            listed = ", ".join(n for n, _ in run.layout)
            raise ConfigError(f"--personal-layers {self.pattern} matches {what} of this model ({listed})")
        self.names, self.mask = names, run.slices(names)
        shared = int((~self.mask).sum())
        self.shared_bytes = len(write_tfv1({PACKED: np.zeros(shared, np.float32)})) if shared else 0

    def describe(self) -> dict[str, Any]:
        return {"personal_layers": self.names, "shared_bytes": self.shared_bytes}

    def plan(self, round_num: int, device_ids: Any, plans: dict[int, DevicePlan]) -> None:
        instruction = PersonalLayers(self.mask)
        for d in device_ids:
            plans[d] = plans.get(d, DevicePlan()).given(instruction)

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        """The device keeps its personal weights; it sends the shared ones (the personal places carry
        the global's values, so nothing of them reaches the sum)."""
        assert up.flat is not None and ctx.global32 is not None
        up.state.put(PERSONAL, up.flat[self.mask].copy())
        flat = up.flat.copy()
        flat[self.mask] = ctx.global32[self.mask]
        up.flat, up.nbytes = flat, self.shared_bytes
        return up

    def upload_bytes(self, nbytes: int, params: int) -> int:
        return self.shared_bytes

    def download_bytes(self, nbytes: int, params: int) -> int:
        return self.shared_bytes

    def settle(self, flat: np.ndarray, before: np.ndarray) -> np.ndarray:
        """The new global model with its personal part as it was (only the shared part is averaged)."""
        flat = np.array(flat, np.float32)
        flat[self.mask] = before[self.mask]
        return flat

    def personaliser(self) -> Instruction | None:
        return PersonalLayers(self.mask)
