"""Byzantine devices (--byzantine, --attack): which devices attack (seeded, fixed for the run) and the
attack they mount, one of the attacks registered in fedsim.pipeline.attacks (signflip, gaussian,
labelflip, alie, ...). This stage picks the attackers, gives them their role and the attack's
instructions, and calls the attack's hooks on their uploads and on the round; it names no attack."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from fedsim.core.context import RunContext
from fedsim.core.instructions import Instruction
from fedsim.core.settings import ConfigError, Section, flag, setting
from fedsim.pipeline import attacks
from fedsim.pipeline.attacks.base import AttackKind
from fedsim.pipeline.base import ServerContext, Stage, Upload, UploadContext
from fedsim.strategies.base import HONEST, Aggregate, DevicePlan


def _scaled() -> list[type[AttackKind]]:
    return [k for k in attacks.kinds().values() if k.takes_scale]


def _said(values: list[str]) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else "".join(values)


@dataclass(frozen=True)
class AttackSettings(Section):
    section = "attack"
    byzantine: float = setting(
        0.0, "share of devices (seeded, fixed for the run) that attack with --attack", least=0, below=1
    )
    attack: str | None = setting(None, "what the --byzantine devices do", choices=tuple(attacks.kinds()))
    attack_scale: float | None = setting(None, ", ".join(k.scale_help for k in _scaled()), above=0)

    def check(self) -> None:
        if self.attack is not None and self.byzantine <= 0:
            raise ConfigError(f"--byzantine must be above 0 with --attack {self.attack}, got {self.byzantine!r}")
        if self.attack is None and self.byzantine > 0:
            raise ConfigError(f"--byzantine {self.byzantine} needs --attack ({', '.join(attacks.kinds())})")
        if self.attack_scale is not None and (self.attack is None or not attacks.kinds()[self.attack].takes_scale):
            takers = _said([k.name for k in _scaled()])
            raise ConfigError(f"{flag('attack_scale')} applies to --attack {takers}, got {self.attack_scale!r}")


def byzantine_devices(num_devices: int, fraction: float, seed: int) -> np.ndarray:
    """The ids of the round(fraction x devices) attacking devices, drawn once from the seed."""
    count = round(fraction * num_devices)
    rng = np.random.default_rng([seed, 0xB7A2])
    return np.sort(rng.choice(num_devices, size=count, replace=False)).astype(np.int64)


@dataclass
class Attack(Stage):
    name = "attack"
    after = ("verify",)
    Settings = AttackSettings
    where = "device"
    kind: str = "signflip"
    scale: float | None = None
    seed: int = 0
    fraction: float = 0.0
    attackers: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)
    num_classes: int = 0

    def __post_init__(self) -> None:
        if self.kind not in attacks.kinds():
            raise ValueError(f"--attack must be one of {', '.join(attacks.kinds())}, got {self.kind!r}")
        self.accumulate = self.attack.accumulate

    @cached_property
    def attack(self) -> AttackKind:
        return attacks.kinds()[self.kind](self.scale, self.seed, self.num_classes)

    @classmethod
    def make(cls, settings: AttackSettings, seed: int = 0) -> Attack | None:
        if settings.attack is None:
            return None
        return cls(settings.attack, settings.attack_scale, seed, settings.byzantine)

    @property
    def instructions(self) -> tuple[type[Instruction], ...]:  # type: ignore[override]
        return self.attack.instructions

    @property
    def needs_global(self) -> bool:  # type: ignore[override]
        return self.attack.needs_global

    @property
    def on_host(self) -> bool:
        return self.attack.on_host

    def for_host(self) -> Attack:
        return dataclasses.replace(self, attackers=np.zeros(0, np.int64))  # hosts read roles from the plans

    def check_fleet(self, devices: int) -> None:
        count = len(byzantine_devices(devices, self.fraction, self.seed))
        if count == 0:
            raise ConfigError(
                f"--byzantine {self.fraction} of {devices} devices rounds to no attacker; "
                f"use at least --byzantine {1 / devices:.4g} (one device)"
            )
        if self.attack.needs_honest and count >= devices:
            raise ConfigError(
                f"--attack {self.kind} needs honest devices to imitate, and --byzantine {self.fraction} of {devices} "
                f"devices makes every one an attacker; use at most --byzantine {(devices - 1) / devices:.4g}"
            )

    def bind(self, run: RunContext) -> None:
        self.attackers = byzantine_devices(run.devices, self.fraction, self.seed)
        self.num_classes = run.task.num_classes
        self.__dict__.pop("attack", None)  # made again with the task's classes

    def plan(self, round_num: int, device_ids: Sequence[int], plans: dict[int, DevicePlan]) -> None:
        for d in np.intersect1d(self.attackers, device_ids).tolist():
            plans[d] = self.attack.plan(dataclasses.replace(plans.get(d, DevicePlan()), role=self.kind))

    def upload(self, up: Upload, ctx: UploadContext) -> Upload:
        """What an attacker sends instead of its trained weights, where its attack rewrites it."""
        if up.plan.role == HONEST or not self.attack.on_host:
            return up
        assert up.flat is not None and ctx.global_flat is not None
        up.flat = self.attack.upload(up.flat, ctx.global_flat, up.device_id, ctx.round_num)
        return up

    def server(self, aggregate: Aggregate, ctx: ServerContext) -> Aggregate:
        return self.attack.server(aggregate, self.attackers)
