"""A device host as a Ray actor, and the run's preparation: in the coordinator with the hosts, or as a
Ray task (fedsim.engine.ray uses them)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import psutil
import ray
from ray.exceptions import OutOfMemoryError, RayTaskError, WorkerCrashedError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fedsim.core.task import Task
from fedsim.engine import channel, exchange
from fedsim.engine.base import EngineError
from fedsim.engine.host import DeviceHost
from fedsim.engine.layout import Prepared, PreparedData, Setup, prepare, test_blocks
from fedsim.engine.ray_session import SESSION, kill, retrieved, wait_for_exit
from fedsim.model import cache
from fedsim.model.builders import ArtifactRecipe


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
        self.exchange: Path | None = None  # the coordinator's exchange folder, where this host sees it
        self.replies = 0

    def load(self, fleet: Any, tests: Any, artifact: bytes, settings: Any = None) -> int:
        if self.loaded:
            DeviceHost.close(self)
        if settings is not None:  # a warm host taking another run (and its exchange, if it has one)
            self.settings, self.exchange = settings, None
        DeviceHost.__init__(self, self.host_index, fleet, self.settings, tests, artifact)
        self.loaded = True
        return self.ready()

    def _check_loaded(self) -> None:
        if not self.loaded:
            raise RuntimeError(f"host {self.host_index} was restarted and has not been given its data yet")

    def run_round(self, *args: Any, **kwargs: Any) -> Any:
        self._check_loaded()
        result = super().run_round(*args, **kwargs)
        if self.exchange is not None:  # its large arrays through shared memory, not the object store
            self.replies += 1
            result = exchange.send(result, self.exchange, f"host{self.host_index}-{os.getpid()}-{self.replies}")
        return result

    def serve(self, path: str, token: str) -> None:
        """Answer the coordinator's calls over its socket until it says stop (fedsim.engine.channel)."""
        self._check_loaded()
        channel.serve(self, path, token, self.host_index)

    def use_exchange(self, folder: Path, token: str) -> bool:
        """Hand large arrays through the coordinator's exchange folder if this host sees it."""
        self.exchange = folder if exchange.joins(folder, token) else None
        return self.exchange is not None

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
        where the coordinator prepared the data itself (`prepare_here`)."""
        from fedsim.artifact import inspect

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


@dataclasses.dataclass
class Started:
    """A run's hosts, loaded: what the engine keeps of a start."""

    prepared: Prepared
    prepared_at: float  # when the data was in the object store (perf_counter)
    actors: list[Any]
    host_data: list[tuple[Any, ...]]  # per host: the refs `load` takes (again after a restart)
    host_pids: list[int]


def prepare_here(host_cls: Any, hosts: int, setup: Setup, data: PreparedData, artifact: bytes) -> Started:
    """The data prepared in this process, the artifact from a cache: the shards go into the object
    store from here (this process lets go of them after), the hosts load them, and the first host
    measures the artifact (its report), so this process never loads TensorFlow's libraries."""
    fresh: list[Any] = [host_cls.remote(i, setup.settings) for i in range(hosts)]
    try:
        test_refs = [ray.put(block) for block in test_blocks(data.dataset, hosts)]
        host_data = _host_data(ray.put(data.fleet), test_refs, artifact, setup)
        prepared_at = time.perf_counter()
        host_pids = ray.get([a.load.remote(*host_data[i]) for i, a in enumerate(fresh)])
        report: dict[str, Any] = ray.get(fresh[0].inspect.remote(data.info["task"], data.sample, data.batch_size))
    except RayTaskError as e:  # the artifact cannot run here: the host's own error, one line
        kill(fresh)
        raise (e.cause if isinstance(e.cause, Exception) else e) from None
    except BaseException:
        kill(fresh)
        raise
    prepared = Prepared(artifact, dict(data.info), None, [], data.label_counts, data.test_sizes, report)
    return Started(prepared, prepared_at, fresh, host_data, host_pids)


def _host_data(fleet_ref: Any, test_refs: list[Any], artifact: bytes, setup: Setup) -> list[tuple[Any, ...]]:
    """Per host, what `load` takes: the fleet's data, its test blocks, the artifact (one object for
    all), the settings; kept by the engine to load a restarted host again."""
    artifact_ref = ray.put(artifact)
    return [(fleet_ref, test_refs[i], artifact_ref, setup.settings) for i in range(len(test_refs))]


def prepare_in_worker(
    host_cls: Any, hosts: int, setup: Setup, warm: list[Any] | None, keep_warm: bool, pool_key: tuple[Any, ...]
) -> Started:
    """A one-shot worker on this node (where the data set was found) loads and splits the data and
    makes the artifact (converting the model, importing TensorFlow), putting each host's share
    straight into the object store. The coordinator process never imports TensorFlow, and the
    worker exits as soon as its results are in the object store (the hosts wait for it)."""
    h = hosts
    recipe = setup.artifact if isinstance(setup.artifact, ArtifactRecipe) and keep_warm else None
    if recipe is not None:  # conversions an earlier run of this process made: the preparation reuses them
        setup = dataclasses.replace(setup, known_artifacts=cache.for_task(recipe))
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    # Not retried: a preparation killed for memory would be killed again, and Ray would retry it forever.
    if warm:  # a warm host prepares: its process has TensorFlow loaded already
        refs = warm[0].prepare.options(num_returns=4 + h).remote(setup, h)
    else:
        # no CPU of its own: the hosts, started next, hold the CPUs and wait for its results
        task = ray.remote(max_calls=1)(prepare_remote).options(
            num_returns=4 + h, scheduling_strategy=here, max_retries=0, num_cpus=0
        )
        refs = task.remote(setup, h)
    # Cold hosts start while the data is prepared (sent after the preparation, which so takes one
    # of the workers Ray starts with).
    fresh: list[Any] = [] if warm else [host_cls.remote(i, setup.settings) for i in range(h)]
    try:
        try:
            artifact, info, worker_pid = ray.get(refs[:3])
        except RayTaskError as e:
            # Bad data, a partition that cannot be made, a model or artifact that cannot run: the
            # worker's own error, one line, not Ray's wrapping of it with the worker's traceback.
            retrieved(refs)
            if warm:  # the warm host that prepared is fine: park it again for the next run
                SESSION.park(pool_key, warm)
            raise (e.cause if isinstance(e.cause, Exception) else e) from None
        except (OutOfMemoryError, WorkerCrashedError) as e:
            retrieved(refs)
            available = psutil.virtual_memory().available / 2**30
            what = "ran out of memory" if isinstance(e, OutOfMemoryError) else "crashed"
            raise EngineError(
                f"preparing the run {what} (loading and splitting the data for {setup.devices} devices, "
                f"converting the model); this node has {available:.1f} GiB available: use fewer "
                "--devices or a smaller data set"
            ) from None
    except BaseException:
        kill(fresh)  # the run ends here: the hosts started for it go with it
        raise
    counts, test_sizes, report = info.pop("label_counts"), info.pop("test_sizes"), info.pop("report")
    convert_s = float(info.pop("convert_s", 0.0))
    if recipe is not None:
        cache.put(dataclasses.replace(recipe, task=Task.from_dict(info["task"])), artifact)
    prepared_at = time.perf_counter()
    actors = warm or fresh
    host_data = _host_data(refs[3], refs[4:], artifact, setup)
    loads = [a.load.remote(*host_data[i]) for i, a in enumerate(actors)]
    if not warm:  # its memory is given back before the first round
        wait_for_exit(worker_pid)
    prepared = Prepared(artifact, info, None, [], counts, test_sizes, report, convert_s)
    return Started(prepared, prepared_at, actors, host_data, ray.get(loads))


class Serving:
    """The engine's hosts that serve their calls over the socket (fedsim.engine.channel), and their
    serving calls, whose outcomes are read once they end (so Ray reports none unread)."""

    def __init__(self, channels: channel.Channels) -> None:
        self.channels = channels
        self.calls: dict[int, Any] = {}

    def start(self, actors: list[Any], hosts: set[int]) -> None:
        """`hosts` (on this machine) serve from now on; one that does not connect takes Ray tasks."""
        asked = {h for h in hosts if h not in self.channels.links}
        for h in asked:
            self.calls[h] = actors[h].serve.remote(self.channels.path, self.channels.token)

        def ended() -> set[int]:  # (a serving that ended before it connected: the host was not loaded)
            return {h for h in asked if h in self.calls and ray.wait([self.calls[h]], timeout=0)[0]}

        self.channels.accept(asked, 60.0, ended)
        for h in ended():
            self._settle(h)

    def stop(self) -> None:
        """Every host stops serving once it has answered what it was sent."""
        self.channels.stop()
        for h in list(self.calls):
            self._settle(h)

    def drop(self, h: int) -> None:
        """A host that died or was killed."""
        self.channels.drop(h)
        if h in self.calls:
            self._settle(h)

    def _settle(self, h: int) -> None:
        try:
            ray.get(self.calls.pop(h), timeout=1)
        except Exception:  # (its devices' failures are recorded where the engine waited for them)
            pass
