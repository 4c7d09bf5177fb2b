"""In-process engine: the same hosts as the Ray engine, called directly. For tests and debugging."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedsim.device import open_runner
from fedsim.engine.base import Engine, Evaluation, PersonalEval, RoundResult, combine_evaluations
from fedsim.engine.host import DeviceHost
from fedsim.engine.layout import Prepared, Setup, prepare
from fedsim.pipeline.base import HostRound


class LocalEngine(Engine):
    def __init__(self, num_hosts: int = 1, runner_factory: Callable[[bytes], Any] = open_runner) -> None:
        if num_hosts < 1:
            raise ValueError(f"num_hosts must be >= 1, got {num_hosts}")
        self.num_hosts = num_hosts
        self.hosts: list[DeviceHost] = []
        self.runner_factory = runner_factory  # the interpreter each host lends its devices

    def start(self, setup: Setup) -> Prepared:
        self.num_hosts = min(self.num_hosts, setup.devices)
        prepared = prepare(setup, self.num_hosts)
        self.test_samples = int(prepared.dataset_info["test_samples"])
        assert prepared.fleet is not None
        self.hosts = [
            DeviceHost(h, prepared.fleet, setup.settings, tests, prepared.artifact, self.runner_factory)
            for h, tests in enumerate(prepared.tests)
        ]
        self.set_costs(prepared, setup.settings)
        return prepared

    def use_state_folder(self, folder: Path) -> None:
        for host in self.hosts:
            host.use_state_folder(folder)

    def initial_checkpoint(self) -> bytes:
        return self.hosts[0].initial_checkpoint()

    def evaluate(self, checkpoint: bytes, device_ids: Sequence[int] = ()) -> Evaluation:
        per_host = self.split(device_ids)
        parts = [host.evaluate(checkpoint, per_host.get(h, [])) for h, host in enumerate(self.hosts)]
        return combine_evaluations(parts, self.test_samples)

    def evaluate_personal(self, checkpoint: bytes, personal: PersonalEval) -> dict[int, tuple[float, float]]:
        out: dict[int, tuple[float, float]] = {}
        for h, mine in sorted(self.split(personal.device_ids).items()):
            out.update(self.hosts[h].evaluate_personal(checkpoint, personal.only(mine)))
        return out

    def run_round(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], work: HostRound
    ) -> RoundResult:
        result = RoundResult()
        for h, mine in sorted(self.split(device_ids).items()):
            result.extend(self.hosts[h].run_round(round_num, global_checkpoint, mine, work.only(mine)))
        return result

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        self.hosts = []
