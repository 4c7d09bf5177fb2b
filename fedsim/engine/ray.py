"""Device hosts as Ray actors. The only module in fedsim that imports Ray.

Each actor hosts many devices (a process importing TensorFlow costs ~0.5 GB, so a fleet of thousands
cannot be thousands of processes). Shards are placed once at start-up through the object store; every
round a host gets one call with the global checkpoint (bytes, put once) and the ids of its selected
devices. Nothing assumes a shared filesystem, so the same code runs on a multi-node cluster.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from fedsim.data.dataset import Dataset
from fedsim.engine.base import (
    DeviceReport, Engine, HostReduce, HostSettings, RoundResult, combine_evaluations, host_data, test_blocks,
)
from fedsim.model.builders import ArtifactRecipe
from fedsim.engine.host import DeviceHost


class RayConnectionError(ConnectionError):
    """The Ray cluster named by --address could not be joined."""


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a host:port nobody listens on; ray.init would retry for minutes."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: Ray resolves and reports them itself
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
        pass


def connect(address: str | None = None) -> bool:
    """Join `address`, or start a local Ray. Returns True if this call started Ray (and owns it)."""
    if ray.is_initialized():
        return False
    # Workers inherit the driver's environment on a local cluster: keep TensorFlow's C++ logs quiet.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address:
        try:
            _probe(address)
            ray.init(address=address, **kwargs)
        except Exception as e:
            raise RayConnectionError(
                f"--address {address}: no Ray cluster answered ({type(e).__name__}: {e}); "
                "start one with `ray start --head` or leave --address out to run locally"
            ) from None
        return True
    ray.init(include_dashboard=False, **kwargs)
    return True


class RayEngine(Engine):
    def __init__(self, hosts: int | None = None, address: str | None = None, round_timeout_s: float | None = None) -> None:
        self.requested_hosts = hosts
        self.address = address
        self.round_timeout_s = round_timeout_s
        self.num_hosts = 0
        self.actors: list[Any] = []
        self.host_pids: list[int] = []
        self._owns_ray = False

    def _connect(self) -> None:
        if not ray.is_initialized():
            self._owns_ray = connect(self.address)

    def start(
        self, recipe: ArtifactRecipe, dataset: Dataset, shards: Sequence[np.ndarray], settings: HostSettings
    ) -> bytes:
        self._connect()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.num_hosts = min(self.requested_hosts or cpus, len(shards))
        # More hosts than CPUs (e.g. one actor per device) must still all be scheduled.
        per_host_cpus = min(1.0, cpus / self.num_hosts)
        actor_cls = ray.remote(DeviceHost).options(num_cpus=per_host_cpus, scheduling_strategy="SPREAD")
        tests = test_blocks(dataset, self.num_hosts)
        self.test_samples = len(dataset.y_test)
        # Each host's data goes into the object store once and is read there without a copy.
        self.actors = [
            actor_cls.remote(h, ray.put(data), settings, tests[h])
            for h, data in enumerate(host_data(dataset, shards, self.num_hosts))
        ]
        # Host 0 converts the model: the coordinator process never imports TensorFlow (~0.5 GB), and
        # no extra process holds it either. Then every host loads the same bytes.
        artifact = ray.get(self.actors[0].build_artifact.remote(recipe))
        artifact_ref = ray.put(artifact)
        self.host_pids = ray.get([a.load.remote(artifact_ref) for a in self.actors])
        return artifact

    def initial_checkpoint(self) -> bytes:
        return ray.get(self.actors[0].initial_checkpoint.remote())

    def evaluate(self, checkpoint: bytes) -> tuple[float, float]:
        ref = ray.put(checkpoint)
        parts = ray.get([a.evaluate.remote(ref) for a in self.actors], timeout=self.round_timeout_s)
        return combine_evaluations(parts, self.test_samples)

    def run_round(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], reduce: HostReduce | None = None
    ) -> RoundResult:
        checkpoint_ref = ray.put(global_checkpoint)  # one copy in the object store, read by every host
        calls = [
            (h, mine, self.actors[h].run_round.remote(round_num, checkpoint_ref, mine, reduce))
            for h, mine in sorted(self.split(device_ids).items())
        ]
        result = RoundResult()
        for h, mine, ref in calls:
            try:
                result.extend(ray.get(ref, timeout=self.round_timeout_s))
            except (RayActorError, RayTaskError, GetTimeoutError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                error = f"host {h} failed: {type(e).__name__}: {first}"
                result.reports.extend(DeviceReport(d, h, 0, "failed", error=error) for d in mine)
        return result

    def close(self) -> None:
        for actor in self.actors:
            try:
                ray.get(actor.close.remote(), timeout=10)
            except Exception:  # a dead host has nothing left to clean
                pass
            ray.kill(actor)
        self.actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
