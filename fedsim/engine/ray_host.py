"""A device host as a Ray actor, and the run's preparation as a Ray task (fedsim.engine.ray uses both)."""

from __future__ import annotations

import os
from typing import Any

import ray

from fedsim.engine.host import DeviceHost
from fedsim.engine.layout import Setup, prepare


def prepare_remote(setup: Setup, num_hosts: int) -> tuple[Any, ...]:
    """`prepare` in a Ray worker, its results packed for the object store: the .tflite, what the data
    set was, the worker's pid, then the fleet's data and each host's test blocks as their own objects."""
    prepared = prepare(setup, num_hosts)
    info = {
        **prepared.dataset_info,
        "label_counts": prepared.label_counts,
        "test_sizes": prepared.test_sizes,
        "report": prepared.report,
        "convert_s": prepared.convert_s,
    }
    return (prepared.artifact, info, os.getpid(), prepared.fleet, *prepared.tests)


class RayDeviceHost(DeviceHost):
    """A DeviceHost as a Ray actor: it starts empty and `load` gives it its data (the fleet's
    arrays, its test blocks, the .tflite; object refs the engine keeps alive for the run). When Ray
    restarts a host that died, the engine loads it again before its next call. The data is not a
    constructor argument, so Ray has no restart-time reference to warn about on every start."""

    def __init__(self, host_index: int, settings: Any) -> None:
        self.host_index, self.settings, self.loaded = host_index, settings, False

    def load(self, fleet: Any, tests: Any, artifact: bytes, settings: Any = None) -> int:
        if self.loaded:
            DeviceHost.close(self)
        if settings is not None:  # a warm host taking another run
            self.settings = settings
        DeviceHost.__init__(self, self.host_index, fleet, self.settings, tests, artifact)
        self.loaded = True
        return self.ready()

    def _check_loaded(self) -> None:
        if not self.loaded:
            raise RuntimeError(f"host {self.host_index} was restarted and has not been given its data yet")

    def run_round(self, *args: Any, **kwargs: Any) -> Any:
        self._check_loaded()
        return super().run_round(*args, **kwargs)

    def use_state_folder(self, folder: Any) -> bool:
        self._check_loaded()
        return super().use_state_folder(folder)

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        self._check_loaded()
        return super().evaluate(*args, **kwargs)

    def evaluate_personal(self, *args: Any, **kwargs: Any) -> Any:
        self._check_loaded()
        return super().evaluate_personal(*args, **kwargs)

    def initial_checkpoint(self) -> bytes:
        self._check_loaded()
        return super().initial_checkpoint()

    def inspect(self, task: dict[str, Any], sample: tuple[Any, Any], batch_size: int) -> dict[str, Any]:
        """The artifact report (signatures, ops, latency on this host's machine) of the loaded artifact,
        where the coordinator prepared the data itself (fedsim.engine.ray's _prepare_here)."""
        from fedsim.artifact import inspect
        from fedsim.core.task import Task

        self._check_loaded()
        assert self.artifact is not None
        return inspect(self.artifact, Task.from_dict(task), sample, batch_size=batch_size).to_dict()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def prepare(self, setup: Setup, num_hosts: int) -> tuple[Any, ...]:
        """The run's preparation (see `prepare_remote`) on a warm host, whose process has TensorFlow
        loaded already: a warm start skips a worker's start-up."""
        return prepare_remote(setup, num_hosts)

    def close(self) -> None:
        """Clean the scratch folder and let go of the run's data and interpreter (a parked host must
        not keep the last run's fleet pinned in the object store); `load` makes it whole again."""
        if self.loaded:
            super().close()
            self.fleet, self.test_blocks, self.artifact = None, [], None  # type: ignore[assignment]
            self._runner, self._flat_reader = None, None
            self.loaded = False
