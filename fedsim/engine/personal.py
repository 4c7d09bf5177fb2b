"""Personalised evaluation on a host (fedsim.loop.personal decides which devices and records the
scores): each device scores the global model as received, then its personal model (what the run's
method makes of its state), fine-tuned on its own training data for the asked epochs, on its own test
split. Nothing of it is kept: the fine-tuned weights, and the device state, are left as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from fedsim.core.devicestate import DeviceState
from fedsim.core.shelf import Shelf
from fedsim.device import Device, Runner, evaluate_counts
from fedsim.device.train import DeviceRound, shuffle_rng
from fedsim.engine.base import PersonalEval
from fedsim.engine.layout import ShardData
from fedsim.engine.settings import HostSettings


class DeviceHost(Protocol):
    """What of a host (fedsim.engine.host) the evaluation uses."""

    scratch: Path
    settings: HostSettings
    shelf: Shelf
    fleet: ShardData

    @property
    def runner(self) -> Runner: ...

    def device(self, device_id: int) -> Device | None: ...


def evaluate_personal(host: DeviceHost, checkpoint: bytes, personal: PersonalEval) -> dict[int, tuple[float, float]]:
    """device id -> (global accuracy, personal accuracy), for those of the evaluation's devices that
    have a test split of their own."""
    path = host.scratch / "personal-global.ckpt"
    path.write_bytes(checkpoint)
    runner, out = host.runner, {}
    try:
        for d in personal.device_ids:
            device = host.device(d)
            if device is None or device.x_test is None or device.y_test is None or not len(device.y_test):
                continue
            test = [(device.x_test, device.y_test)]
            unscored = host.fleet.unscored
            right, _ = evaluate_counts(runner, path, test, unscored=unscored)
            rnd = DeviceRound(
                runner,
                device,
                personal.round_num,
                host.settings.batch_size,
                path,
                host.scratch / "personal.ckpt",
                state_of(host, d, personal),
                personal.spec,
            )
            own = personal.maker.personal_model(rnd) if personal.maker is not None else None
            runner.restore(own or path)
            if personal.epochs:  # fine-tuning on its own data, shuffled apart from its training rounds
                rnd.rng = shuffle_rng(personal_seed(host.settings.seed), d, personal.round_num)
                rnd.train_epochs(rnd.epochs(personal.epochs), {}, record=False)
            mine, _ = evaluate_counts(runner, path, test, restore=False, unscored=unscored)
            if right[2]:
                out[d] = (right[0] / right[2], mine[0] / mine[2])
    finally:
        path.unlink(missing_ok=True)
        for leftover in host.scratch.glob("personal*.ckpt"):
            leftover.unlink(missing_ok=True)
    return out


def state_of(host: DeviceHost, device_id: int, personal: PersonalEval) -> DeviceState:
    """The device's state as the round left it (handed over by the engine on a relay host)."""
    if device_id in personal.carried:
        carried = personal.carried[device_id]
        return DeviceState(lambda: carried)
    segment = personal.state_at.get(device_id)
    return DeviceState() if segment is None else DeviceState(lambda: host.shelf.read(segment, device_id))


def personal_seed(seed: int) -> int:
    """The seed fine-tuning shuffles with (never the one of a device's training rounds)."""
    return (seed ^ 0x5EED_F17E) % 2**32
