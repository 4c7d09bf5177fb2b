"""In-process engine: the same hosts as the Ray engine, called directly. For tests and debugging."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.data.dataset import Dataset
from fedsim.engine.base import (
    Engine, HostReduce, HostSettings, RoundResult, combine_evaluations, host_data, test_blocks,
)
from fedsim.engine.host import DeviceHost
from fedsim.model.builders import ArtifactRecipe


class LocalEngine(Engine):
    def __init__(self, num_hosts: int = 1) -> None:
        if num_hosts < 1:
            raise ValueError(f"num_hosts must be >= 1, got {num_hosts}")
        self.num_hosts = num_hosts
        self.hosts: list[DeviceHost] = []

    def start(
        self, recipe: ArtifactRecipe, dataset: Dataset, shards: Sequence[np.ndarray], settings: HostSettings
    ) -> bytes:
        artifact = recipe.build()
        self.num_hosts = min(self.num_hosts, len(shards))
        tests = test_blocks(dataset, self.num_hosts)
        self.test_samples = len(dataset.y_test)
        self.hosts = [
            DeviceHost(h, data, settings, tests[h], artifact)
            for h, data in enumerate(host_data(dataset, shards, self.num_hosts))
        ]
        return artifact

    def initial_checkpoint(self) -> bytes:
        return self.hosts[0].initial_checkpoint()

    def evaluate(self, checkpoint: bytes) -> tuple[float, float]:
        return combine_evaluations([h.evaluate(checkpoint) for h in self.hosts], self.test_samples)

    def run_round(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], reduce: HostReduce | None = None
    ) -> RoundResult:
        result = RoundResult()
        for h, mine in sorted(self.split(device_ids).items()):
            result.extend(self.hosts[h].run_round(round_num, global_checkpoint, mine, reduce))
        return result

    def close(self) -> None:
        for host in self.hosts:
            host.close()
        self.hosts = []
