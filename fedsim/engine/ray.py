"""Device hosts as Ray actors, and the engine that deals them their devices. Ray is imported here and
in fedsim.engine.ray_session (the session and its parked hosts) only.

Each actor hosts many devices (a process importing TensorFlow costs ~0.5 GB, so a fleet of thousands
cannot be thousands of processes). The fleet's data goes into the object store once at start-up and
every host maps it (one copy per node), so any host can run any device; every round a host gets one
call with the global checkpoint (bytes, put once) and the ids of the devices dealt to it. Nothing
assumes a shared filesystem, so the same code runs on a multi-node cluster.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    OutOfMemoryError,
    RayActorError,
    RayTaskError,
    WorkerCrashedError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from fedsim.core.task import Task
from fedsim.engine import relay
from fedsim.engine.base import (
    DeviceReport,
    Engine,
    EngineError,
    Evaluation,
    PersonalEval,
    RoundResult,
    combine_evaluations,
)
from fedsim.engine.layout import Prepared, PreparedData, Setup, prepare_data, ready_artifact, test_blocks
from fedsim.engine.ray_host import RayDeviceHost, prepare_remote
from fedsim.engine.ray_session import SESSION, connect, kill, retrieved, wait_for_exit
from fedsim.engine.settings import EngineSettings
from fedsim.model import cache
from fedsim.model.builders import ArtifactRecipe
from fedsim.pipeline.base import HostRound

HOST_RESTARTS = 5  # a host that keeps dying (e.g. out of memory at start) is given up after this


class RayEngine(Engine):
    def __init__(
        self,
        hosts: int | None = None,
        address: str | None = None,
        round_timeout_s: float | None = None,
        keep_warm: bool = False,
    ) -> None:
        # keep_warm: on close, leave Ray running and park the hosts for the next run in this process
        self.keep_warm = keep_warm
        self.startup_s: dict[str, float] = {}  # seconds per start-up stage of the last start()
        self.requested_hosts = hosts
        self.address = address
        self.round_timeout_s = round_timeout_s
        self.num_hosts = 0
        self.actors: list[Any] = []
        self.host_pids: list[int] = []
        self._host_data: list[tuple[Any, ...]] = []  # per host: the refs `load` takes
        self.host_nodes: list[str] = []
        self._restarting: set[int] = set()  # hosts that died or were killed; Ray is bringing them back
        self._owns_ray = False
        self._put_cache: tuple[bytes, Any] | None = None
        self._pool_key: tuple[Any, ...] = ()
        self._state_dir: Path | None = None
        self.relay: set[int] = set()  # hosts that cannot reach the state folder: their state goes through here

    @classmethod
    def of(cls, settings: EngineSettings, keep_warm: bool = False) -> RayEngine:
        """The engine of a run's engine settings (--hosts, --address, --round-timeout)."""
        return cls(settings.hosts, settings.address, settings.round_timeout, keep_warm)

    def _put(self, checkpoint: bytes) -> Any:
        """One object-store copy per global checkpoint: a round's model is evaluated, then sent out
        as the next round's starting point, and both calls read the same object."""
        if self._put_cache is None or self._put_cache[0] is not checkpoint:
            self._put_cache = (checkpoint, ray.put(checkpoint))
        return self._put_cache[1]

    def _connect(self) -> None:
        if ray.is_initialized() and SESSION.owned and SESSION.address != self.address:
            SESSION.shutdown()  # the kept session is another cluster than this run asks for
        if not ray.is_initialized():
            self._owns_ray = connect(self.address)
            if self.keep_warm and self._owns_ray:  # the session outlives this engine
                SESSION.keep(self.address)
                self._owns_ray = False

    def start(self, setup: Setup) -> Prepared:
        began = time.perf_counter()
        # A local Ray takes ~2 s to start: the data is loaded and split in this process meanwhile
        # (numpy only), and used if the artifact needs no TensorFlow to have (see _prepare_here).
        early, pool = None, None
        if self.address is None and not ray.is_initialized():
            pool = ThreadPoolExecutor(1, thread_name_prefix="fedsim-prepare")
            early = pool.submit(prepare_data, setup, True)
        self._connect()
        connected = time.perf_counter()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.num_hosts = h = min(self.requested_hosts or cpus, setup.devices)
        per_host_cpus = min(1.0, cpus / h)  # more hosts than CPUs (one per device) must all be scheduled
        # where this run's hosts are parked after it (warm starts): its Ray session and host shape
        self._pool_key = (ray.get_runtime_context().get_job_id(), h, per_host_cpus)
        warm = SESSION.take(self._pool_key)  # parked hosts of another shape are let go either way
        if warm and not self.keep_warm:
            kill(warm)
            warm = None
        # A host that dies (killed, out of memory) is restarted by Ray and loaded again from the same
        # refs: the fleet's data and the .tflite stay in the object store (kept alive here for the
        # run), so it comes back whole for the next round. The round it died in is not retried: its
        # devices are recorded as failed. A host process loads TFLite's interpreter
        # (fedsim.device.tflite_loader), not the TensorFlow package: it starts in a fraction of a second.
        self._actor_cls = ray.remote(RayDeviceHost).options(
            num_cpus=per_host_cpus, scheduling_strategy="SPREAD", max_restarts=HOST_RESTARTS, max_task_retries=0
        )
        data = None
        if early is not None and pool is not None:
            pool.shutdown(wait=False)
            data, early = early.result(), None  # bad data fails here, with its own error
        artifact = ready_artifact(setup, data.dataset.task) if data is not None else None
        if data is not None and artifact is not None:
            prepared, timings = self._prepare_here(setup, data, artifact)
        else:  # TensorFlow is needed (a conversion, a check): the worker loads the data itself
            prepared, timings = self._prepare_remote(setup, warm)
        del data  # the object store holds the shards: this process keeps none of the data
        # Which Ray node each host landed on (SPREAD places them across nodes).
        self.host_nodes = ray.get([a.node_id.remote() for a in self.actors])
        self.startup_s = {
            "ray": connected - began,
            "prepare": timings["prepared"] - connected,
            "hosts": time.perf_counter() - timings["prepared"],
            "conversion": prepared.convert_s,  # part of "prepare": 0 when the artifact came from a cache
            "warm": bool(warm),
        }
        self.set_costs(prepared, setup.settings)
        return prepared

    def _prepare_here(self, setup: Setup, data: PreparedData, artifact: bytes) -> tuple[Prepared, dict[str, float]]:
        """The data prepared in this process, the artifact from a cache: the shards go into the object
        store from here (this process lets go of them after), the hosts load them, and the first host
        measures the artifact (its report), so this process never loads TensorFlow's libraries."""
        h = self.num_hosts
        fresh: list[Any] = [self._actor_cls.remote(i, setup.settings) for i in range(h)]
        try:
            fleet_ref = ray.put(data.fleet)
            test_refs = [ray.put(block) for block in test_blocks(data.dataset, h)]
            info = dict(data.info)
            counts, test_sizes, sample, batch_size = data.label_counts, data.test_sizes, data.sample, data.batch_size
            prepared_at = time.perf_counter()
            self.test_samples = int(info["test_samples"])
            artifact_ref = ray.put(artifact)
            self.actors = fresh
            self._host_data = [(fleet_ref, test_refs[i], artifact_ref, setup.settings) for i in range(h)]
            self.host_pids = ray.get([a.load.remote(*self._host_data[i]) for i, a in enumerate(fresh)])
            report: dict[str, Any] = ray.get(fresh[0].inspect.remote(info["task"], sample, batch_size))
        except RayTaskError as e:  # the artifact cannot run here: the host's own error, one line
            kill(fresh)
            raise (e.cause if isinstance(e.cause, Exception) else e) from None
        except BaseException:
            kill(fresh)
            raise
        prepared = Prepared(artifact, info, None, [], counts, test_sizes, report)
        return prepared, {"prepared": prepared_at}

    def _prepare_remote(self, setup: Setup, warm: list[Any] | None) -> tuple[Prepared, dict[str, float]]:
        """A one-shot worker on this node (where the data set was found) loads and splits the data and
        makes the artifact (converting the model, importing TensorFlow), putting each host's share
        straight into the object store. The coordinator process never imports TensorFlow, and the
        worker exits as soon as its results are in the object store (the hosts wait for it)."""
        h = self.num_hosts
        recipe = setup.artifact if isinstance(setup.artifact, ArtifactRecipe) and self.keep_warm else None
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
        fresh: list[Any] = [] if warm else [self._actor_cls.remote(i, setup.settings) for i in range(h)]
        try:
            try:
                artifact, info, worker_pid = ray.get(refs[:3])
            except RayTaskError as e:
                # Bad data, a partition that cannot be made, a model or artifact that cannot run: the
                # worker's own error, one line, not Ray's wrapping of it with the worker's traceback.
                retrieved(refs)
                if warm:  # the warm host that prepared is fine: park it again for the next run
                    SESSION.park(self._pool_key, warm)
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
        fleet_ref, test_refs = refs[3], refs[4:]
        self.test_samples = int(info["test_samples"])
        artifact_ref = ray.put(artifact)
        self.actors = warm or fresh
        self._host_data = [(fleet_ref, test_refs[i], artifact_ref, setup.settings) for i in range(h)]
        loads = [a.load.remote(*self._host_data[i]) for i, a in enumerate(self.actors)]
        if not warm:  # its memory is given back before the first round
            wait_for_exit(worker_pid)
        self.host_pids = ray.get(loads)
        prepared = Prepared(artifact, info, None, [], counts, test_sizes, report, convert_s)
        return prepared, {"prepared": prepared_at}

    def initial_checkpoint(self) -> bytes:
        return ray.get(self.actors[0].initial_checkpoint.remote())

    def use_state_folder(self, folder: Path) -> None:
        self._state_dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        flags = ray.get([a.use_state_folder.remote(folder) for a in self.actors])
        self.relay = {h for h, relays in enumerate(flags) if relays}

    def evaluate(self, checkpoint: bytes, device_ids: Sequence[int] = ()) -> Evaluation:
        self._await_restarts()
        ref = self._put(checkpoint)
        per_host = self.split(device_ids)

        def ask() -> list[Any]:
            calls = [a.evaluate.remote(ref, per_host.get(h, [])) for h, a in enumerate(self.actors)]
            try:
                return ray.get(calls, timeout=self.round_timeout_s)
            except GetTimeoutError:  # the run stops here (its committed rounds stand)
                raise EngineError(
                    f"evaluating the model on the hosts took longer than --round-timeout {self.round_timeout_s:g} s "
                    f"({self.test_samples} test samples; the timeout covers evaluation too): raise --round-timeout"
                ) from None

        try:
            parts = ask()
        except (RayActorError, RayTaskError):
            # A host died between rounds: Ray restarts it, and every host is loaded again (a loaded
            # one is rebuilt from the same data) before asking once more.
            self._restarting.update(range(self.num_hosts))
            self._await_restarts()
            parts = ask()
        return combine_evaluations(parts, self.test_samples)

    def evaluate_personal(self, checkpoint: bytes, personal: PersonalEval) -> dict[int, tuple[float, float]]:
        self._await_restarts()
        ref = self._put(checkpoint)
        calls = []
        for h, mine in sorted(self.split(personal.device_ids).items()):
            part = personal.only(mine)
            if h in self.relay and self._state_dir is not None:
                part = dataclasses.replace(part, carried=relay.read(part.state_at, self._state_dir))
            calls.append(self.actors[h].evaluate_personal.remote(ref, part))
        out: dict[int, tuple[float, float]] = {}
        for found in ray.get(calls, timeout=self.round_timeout_s):
            out.update(found)
        return out

    def run_round(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], work: HostRound
    ) -> RoundResult:
        return self.submit(round_num, global_checkpoint, device_ids, work)()

    def submit(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], work: HostRound
    ) -> Callable[[], RoundResult]:
        """Queue the devices on the hosts (each runs its calls in order) and return at once."""
        self._await_restarts()
        checkpoint_ref = self._put(global_checkpoint)  # one copy in the object store, read by every host
        calls = []
        for h, mine in sorted(self.split(device_ids).items()):
            part = work.only(mine)
            if h in self.relay and self._state_dir is not None:
                part = relay.carry(part, self._state_dir)
            calls.append((h, mine, self.actors[h].run_round.remote(round_num, checkpoint_ref, mine, part)))
        return lambda: self._collect(calls)

    def _collect(self, calls: list[tuple[int, list[int], Any]]) -> RoundResult:
        """Wait for submitted calls (--round-timeout from now); a host that does not answer in time
        is restarted and its devices marked failed, as one that died."""
        refs = [ref for _, _, ref in calls]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.round_timeout_s)
        done = set(ready)
        result = RoundResult()
        for h, mine, ref in calls:
            if ref not in done:
                # Hung (stopped, deadlocked, far too slow): restart it so the next round finds it idle.
                ray.kill(self.actors[h], no_restart=False)
                self._restarting.add(h)
                error = f"host {h} failed: no answer within --round-timeout {self.round_timeout_s:g} s"
                result.reports.extend(DeviceReport(d, h, 0, "failed", error=error) for d in mine)
                continue
            try:
                answer = ray.get(ref)
                if h in self.relay and self._state_dir is not None:
                    relay.store(answer.states, self._state_dir)
                result.extend(answer)
            except (RayActorError, RayTaskError) as e:
                # died (Ray restarts it), or was restarted unnoticed and has no data: load it again
                self._restarting.add(h)
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                error = f"host {h} failed: {type(e).__name__}: {first}"
                result.reports.extend(DeviceReport(d, h, 0, "failed", error=error) for d in mine)
        return result

    def _await_restarts(self, timeout_s: float = 180.0) -> None:
        """Wait for hosts Ray is restarting (TensorFlow import, interpreter) and load them again before
        the next round's clock starts: the round timeout is for a round's work, not a host's start-up."""
        deadline = time.monotonic() + timeout_s
        for h in sorted(self._restarting):
            while True:
                try:
                    left = max(1.0, deadline - time.monotonic())
                    self.host_pids[h] = ray.get(self.actors[h].load.remote(*self._host_data[h]), timeout=left)
                    if self._state_dir is not None:
                        relays = ray.get(self.actors[h].use_state_folder.remote(self._state_dir), timeout=left)
                        self.relay = (self.relay - {h}) | ({h} if relays else set())
                    break
                except ActorUnavailableError:
                    # "The actor is restarting": not ready to take calls yet; ask again shortly.
                    if time.monotonic() >= deadline:
                        break
                    time.sleep(0.2)
                except (RayActorError, GetTimeoutError):
                    break  # still down (or out of restarts): its devices fail this round and say why
        self._restarting.clear()

    def close(self) -> None:
        alive = []
        for actor in self.actors:
            try:
                ray.get(actor.close.remote(), timeout=10)
                alive.append(actor)
            except Exception:  # a dead host has nothing left to clean
                ray.kill(actor)
        if self.keep_warm and alive and len(alive) == len(self.actors) and ray.is_initialized():
            SESSION.park(self._pool_key, alive)  # parked for the next run
        else:
            kill(alive)
        self.actors = []
        self._host_data = []
        self._put_cache = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
