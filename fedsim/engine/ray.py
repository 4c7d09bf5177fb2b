"""Device hosts as Ray actors, and the engine that deals them their devices. Ray is imported here and
in fedsim.engine.ray_session (the session and its parked hosts) only.

Each actor hosts many devices (a process importing TensorFlow costs ~0.5 GB, so a fleet of thousands
cannot be thousands of processes). The fleet's data goes into the object store once at start-up and
every host maps it (one copy per node), so any host can run any device; every round a host gets one
call with the global checkpoint (bytes, put once) and the ids of the devices dealt to it. Nothing
assumes a shared filesystem, so the same code runs on a multi-node cluster; hosts on the
coordinator's own machine take the checkpoint and hand back their updates as files in shared memory
(fedsim.engine.exchange) and take their calls over a socket (fedsim.engine.channel), both cheaper
than Ray's object store and tasks on a small machine.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    RayActorError,
    RayTaskError,
)

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
from fedsim.engine.channel import Channels, HostCallError, HostGone, Ticket
from fedsim.engine.exchange import Exchange
from fedsim.engine.layout import Prepared, PreparedData, Setup, prepare_data_niced, ready_artifact
from fedsim.engine.ray_host import RayDeviceHost, Serving, prepare_here, prepare_in_worker
from fedsim.engine.ray_session import SESSION, connect, kill
from fedsim.engine.settings import EngineSettings
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
        self.test_samples = 0  # the test set's size (start)
        self.requested_hosts = hosts
        self.address = address
        self.round_timeout_s = round_timeout_s
        self.num_hosts = 0
        self.actors: list[Any] = []
        self.host_pids: list[int] = []
        self.host_data: list[tuple[Any, ...]] = []  # per host: the refs `load` takes
        self.host_nodes: list[str] = []
        self._restarting: set[int] = set()  # hosts that died or were killed; Ray is bringing them back
        self._owns_ray = False
        self._put_cache: tuple[bytes, Any] | None = None
        self.pool_key: tuple[Any, ...] = ()
        self._state_dir: Path | None = None
        self.relay: set[int] = set()  # hosts that cannot reach the state folder: their state goes through here
        self.exchange: Exchange | None = None  # large arrays through shared memory, with the hosts in `shared`
        self.shared: set[int] = set()
        self.serving: Serving | None = None  # ... whose calls go over a socket while they serve

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
        # (numpy only), and used if the artifact needs no TensorFlow to have (see ray_host.prepare_here).
        early: Future[PreparedData] | None = None
        if self.address is None and not ray.is_initialized():
            pool = ThreadPoolExecutor(1, thread_name_prefix="fedsim-prepare")
            early = pool.submit(prepare_data_niced, setup)
            pool.shutdown(wait=False)  # (the submitted preparation still runs)
        self._connect()
        connected = time.perf_counter()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.num_hosts = h = min(self.requested_hosts or cpus, setup.devices)
        per_host_cpus = min(1.0, cpus / h)  # more hosts than CPUs (one per device) must all be scheduled
        # where this run's hosts are parked after it (warm starts): its Ray session and host shape
        self.pool_key = (ray.get_runtime_context().get_job_id(), h, per_host_cpus)
        warm = SESSION.take(self.pool_key)  # parked hosts of another shape are let go either way
        if warm and not self.keep_warm:
            kill(warm)
            warm = None
        # A host that dies (killed, out of memory) is restarted by Ray and loaded again from the same
        # refs: the fleet's data and the .tflite stay in the object store (kept alive here for the
        # run), so it comes back whole for the next round. The round it died in is not retried: its
        # devices are recorded as failed. A host process loads TFLite's interpreter
        # (fedsim.device.tflite_loader), not the TensorFlow package: it starts in a fraction of a second.
        self.actor_cls = ray.remote(RayDeviceHost).options(
            num_cpus=per_host_cpus, scheduling_strategy="SPREAD", max_restarts=HOST_RESTARTS, max_task_retries=0
        )
        data = early.result() if early is not None else None  # bad data fails here, with its own error
        early = None  # (the future holds the data too)
        artifact = ready_artifact(setup, data.dataset.task) if data is not None else None
        if data is not None and artifact is not None:
            started = prepare_here(self.actor_cls, h, setup, data, artifact)
        else:  # TensorFlow is needed (a conversion, a check): the worker loads the data itself
            started = prepare_in_worker(self.actor_cls, h, setup, warm, self.keep_warm, self.pool_key)
        del data  # the object store holds the shards: this process keeps none of the data
        prepared, prepared_at = started.prepared, started.prepared_at
        self.actors, self.host_data, self.host_pids = started.actors, started.host_data, started.host_pids
        self.test_samples = int(prepared.dataset_info["test_samples"])
        # Which Ray node each host landed on (SPREAD places them across nodes).
        self.host_nodes = ray.get([a.node_id.remote() for a in self.actors])
        self.startup_s = {
            "ray": connected - began,
            "prepare": prepared_at - connected,
            "hosts": time.perf_counter() - prepared_at,
            "conversion": prepared.convert_s,  # part of "prepare": 0 when the artifact came from a cache
            "warm": bool(warm),
        }
        self.set_costs(prepared, setup.settings)
        return prepared

    def initial_checkpoint(self) -> bytes:
        self._quiet()
        return ray.get(self.actors[0].initial_checkpoint.remote())

    def use_state_folder(self, folder: Path) -> None:
        self._quiet()
        self._state_dir = folder
        folder.mkdir(parents=True, exist_ok=True)
        flags = ray.get([a.use_state_folder.remote(folder) for a in self.actors])
        self.relay = {h for h, relays in enumerate(flags) if relays}
        if self.exchange is None and (ex := Exchange.open()) is not None:
            self.exchange, self.serving = ex, Serving(Channels(ex.folder, ex.token))
        self._join_exchange(range(len(self.actors)))

    def _join_exchange(self, hosts: Sequence[int], timeout_s: float | None = None) -> None:
        """Which of `hosts` see the exchange folder (they run on this machine): `shared`."""
        if self.exchange is not None:
            ex = self.exchange
            asked = [self.actors[h].use_exchange.remote(ex.folder, ex.token) for h in hosts]
            joined = ray.get(asked, timeout=timeout_s)
            self.shared = (self.shared - set(hosts)) | {h for h, yes in zip(hosts, joined) if yes}

    def _quiet(self) -> None:
        """Stop the hosts serving over the socket before calling them through Ray (see channel)."""
        if self.serving is not None:
            self.serving.stop()

    def evaluate(self, checkpoint: bytes, device_ids: Sequence[int] = ()) -> Evaluation:
        self._quiet()
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
        self._quiet()
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
        per_host = sorted(self.split(device_ids).items())
        if self.serving is not None:
            self.serving.start(self.actors, {h for h, _ in per_host} & self.shared)
        shared = [h for h, _ in per_host if h in self.shared]
        # one copy read by every host: a file in shared memory, else in the object store
        path = self.exchange.checkpoint(global_checkpoint, len(shared)) if self.exchange and shared else None
        calls = []
        for h, mine in per_host:
            part = work.only(mine)
            if h in self.relay and self._state_dir is not None:
                part = relay.carry(part, self._state_dir)
            checkpoint = path if path is not None and h in self.shared else self._put(global_checkpoint)
            if self.serving is not None and h in self.serving.channels.links:
                calls.append((h, mine, self.serving.channels.call(h, "run_round", round_num, checkpoint, mine, part)))
            else:
                calls.append((h, mine, self.actors[h].run_round.remote(round_num, checkpoint, mine, part)))
        return lambda: self._collect(calls, path, len(shared))

    def _collect(
        self, calls: list[tuple[int, list[int], Any]], shared: Path | None = None, uses: int = 0
    ) -> RoundResult:
        """Wait for submitted calls (--round-timeout from now); a host that does not answer in time
        is restarted and its devices marked failed, as one that died. `shared`: the checkpoint file
        `uses` of the calls restored (fedsim.engine.exchange), released once they answered. A call over
        the socket (a Ticket, fedsim.engine.channel) has the same outcomes as a Ray task."""
        began = time.monotonic()
        refs = [ref for _, _, ref in calls if not isinstance(ref, Ticket)]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.round_timeout_s) if refs else ([], [])
        result = RoundResult()
        for h, mine, ref in calls:
            try:
                if isinstance(ref, Ticket):
                    timeout = self.round_timeout_s
                    answer = ref.answer(None if timeout is None else timeout - (time.monotonic() - began))
                elif ref in ready:
                    answer = ray.get(ref)
                else:
                    raise TimeoutError
                if self.exchange is not None:
                    answer = self.exchange.receive(answer)
                if h in self.relay and self._state_dir is not None:
                    relay.store(answer.states, self._state_dir)
                result.extend(answer)
                continue
            except TimeoutError:
                # Hung (stopped, deadlocked, far too slow): restart it so the next round finds it idle.
                ray.kill(self.actors[h], no_restart=False)
                error = f"host {h} failed: no answer within --round-timeout {self.round_timeout_s:g} s"
            except (RayActorError, RayTaskError, HostGone, HostCallError) as e:
                # died (Ray restarts it), or was restarted unnoticed and has no data: load it again
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                error = f"host {h} failed: {type(e).__name__}: {first}"
            self._restarting.add(h)
            if self.serving is not None:
                self.serving.drop(h)
            result.reports.extend(DeviceReport(d, h, 0, "failed", error=error) for d in mine)
        if shared is not None and self.exchange is not None:
            for _ in range(uses):  # (every call that restored it has answered)
                self.exchange.collected(shared)
        return result

    def _await_restarts(self, timeout_s: float = 180.0) -> None:
        """Wait for hosts Ray is restarting (TensorFlow import, interpreter) and load them again before
        the next round's clock starts: the round timeout is for a round's work, not a host's start-up."""
        deadline = time.monotonic() + timeout_s
        for h in sorted(self._restarting):
            if self.serving is not None:
                self.serving.drop(h)
            while True:
                try:
                    left = max(1.0, deadline - time.monotonic())
                    self.host_pids[h] = ray.get(self.actors[h].load.remote(*self.host_data[h]), timeout=left)
                    if self._state_dir is not None:
                        relays = ray.get(self.actors[h].use_state_folder.remote(self._state_dir), timeout=left)
                        self.relay = (self.relay - {h}) | ({h} if relays else set())
                    self._join_exchange([h], left)
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
        self._quiet()
        alive = []
        for actor in self.actors:
            try:
                ray.get(actor.close.remote(), timeout=10)
                alive.append(actor)
            except Exception:  # a dead host has nothing left to clean
                ray.kill(actor)
        if self.keep_warm and alive and len(alive) == len(self.actors) and ray.is_initialized():
            SESSION.park(self.pool_key, alive)  # parked for the next run
        else:
            kill(alive)
        self.actors = []
        self.host_data = []
        self._put_cache = None
        if self.exchange is not None and self.serving is not None:
            self.serving.channels.close()
            self.exchange.close()
            self.exchange, self.serving, self.shared = None, None, set()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
