"""Device hosts as Ray actors. The only module in fedsim that imports Ray.

Each actor hosts many devices (a process importing TensorFlow costs ~0.5 GB, so a fleet of thousands
cannot be thousands of processes). The fleet's data goes into the object store once at start-up and
every host maps it (one copy per node), so any host can run any device; every round a host gets one
call with the global checkpoint (bytes, put once) and the ids of the devices dealt to it. Nothing
assumes a shared filesystem, so the same code runs on a multi-node cluster.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Sequence
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

from fedsim.engine.base import (
    DeviceReport,
    Engine,
    EngineError,
    Evaluation,
    HostPipeline,
    Prepared,
    RoundResult,
    Setup,
    combine_evaluations,
    prepare,
)
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


class _DefaultTokenNotice(logging.Filter):
    """Drops Ray's notice that token authentication is on by default; its other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _token_auth(address: str) -> None:
    """Join a cluster started with `ray start`, which turns token authentication on in Ray 2.60: a
    driver given an explicit host:port does not pick up the token by itself (`--address auto` does),
    so Ray's own "enable token auth if a token exists" step is run first. Nothing changes when the
    user set RAY_AUTH_MODE or has no token. (Setting RAY_AUTH_MODE=token for a local start instead
    breaks it: the driver would lack the new cluster's token.)"""
    if address == "auto":
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


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
        except Exception as e:
            raise RayConnectionError(
                f"--address {address}: no Ray cluster answered ({type(e).__name__}: {e}); "
                "start one with `ray start --head` or leave --address out to run locally"
            ) from None
        logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_DefaultTokenNotice())
        mode = os.environ.get("RAY_AUTH_MODE")
        try:
            _token_auth(address)
            ray.init(address=address, **kwargs)
        except Exception as e:
            # it listens (the probe connected), so it refused us: on Ray 2.60 most likely its token
            raise RayConnectionError(
                f"--address {address}: a Ray cluster answered but the connection failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}); if it uses token authentication (`ray start` turns it "
                "on), this machine needs the cluster's token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
            ) from None
        finally:
            if mode is None:  # left set, it would break a later local start in this process
                os.environ.pop("RAY_AUTH_MODE", None)
        return True
    # A local cluster keeps Ray's default, token authentication, without Ray's notice on every run
    # that it turned it on by default (setting RAY_AUTH_MODE=token instead does not work for a local
    # cluster on Ray 2.60: the driver then lacks the token the new cluster requires).
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_DefaultTokenNotice())
    ray.init(include_dashboard=False, **kwargs)
    return True


def _prepare_remote(setup: Setup, num_hosts: int) -> tuple[Any, ...]:
    prepared = prepare(setup, num_hosts)
    info = {
        **prepared.dataset_info,
        "label_counts": prepared.label_counts,
        "test_sizes": prepared.test_sizes,
        "report": prepared.report,
    }
    return (prepared.artifact, info, os.getpid(), prepared.fleet, *prepared.tests)


def _retrieved(refs: Sequence[Any]) -> None:
    """Fetch the failed results of a task once, so Ray does not print each as an "unhandled error"
    when it is collected (the Ray session may outlive the run: warm starts)."""
    for ref in refs:
        try:
            ray.get(ref, timeout=10)
        except Exception:  # the failure itself, already reported
            pass


def _wait_for_exit(pid: int, timeout_s: float = 15.0) -> None:
    """Wait until a finished one-shot worker of this node has exited (Ray ends it after max_calls)."""
    deadline = time.monotonic() + timeout_s
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)


def disconnect() -> None:
    """Shut down the Ray this process started (see `connect`), and with it any parked hosts."""
    _WARM_HOSTS.clear()
    _SESSION.update(owned=False, address=None)
    if ray.is_initialized():
        ray.shutdown()


class _RayDeviceHost(DeviceHost):
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

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        self._check_loaded()
        return super().evaluate(*args, **kwargs)

    def initial_checkpoint(self) -> bytes:
        self._check_loaded()
        return super().initial_checkpoint()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def prepare(self, setup: Setup, num_hosts: int) -> tuple[Any, ...]:
        """The run's preparation (see `_prepare_remote`) on a warm host, whose process has TensorFlow
        loaded already: a warm start skips a worker's start-up."""
        return _prepare_remote(setup, num_hosts)

    def close(self) -> None:
        """Clean the scratch folder and let go of the run's data and interpreter (a parked host must
        not keep the last run's fleet pinned in the object store); `load` makes it whole again."""
        if self.loaded:
            super().close()
            self.fleet, self.test_blocks, self.artifact, self._runner, self._flat_reader = None, [], None, None, None
            self.loaded = False


HOST_RESTARTS = 5  # a host that keeps dying (e.g. out of memory at start) is given up after this

# Warm starts: a RayEngine made with keep_warm (fedsim.run's) leaves Ray running and parks its hosts
# here when it closes, so the next run in this process (a notebook's next cell, a sweep's next point)
# reuses both instead of starting Ray and importing TensorFlow again. Torn down at exit.
_WARM_HOSTS: dict[tuple[Any, ...], list[Any]] = {}  # (Ray job, hosts, CPUs per host) -> parked actors
_SESSION: dict[str, Any] = {"owned": False, "address": None}  # the Ray this module started and keeps
# Converted artifacts by recipe (built-in models only: a notebook's builder may change under one name).
_ARTIFACTS: dict[tuple[Any, ...], bytes] = {}


def shutdown_warm() -> None:
    """Kill the parked hosts and stop the Ray session kept for warm starts (also run at exit)."""
    for actors in _WARM_HOSTS.values():
        _kill(actors)
    _WARM_HOSTS.clear()
    if _SESSION["owned"] and ray.is_initialized():
        ray.shutdown()
    _SESSION.update(owned=False, address=None)


atexit.register(shutdown_warm)


def _kill(actors: Sequence[Any]) -> None:
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # gone already (with an earlier Ray session, say)
            pass


def _take_warm(key: tuple[Any, ...]) -> list[Any] | None:
    """The parked hosts under `key` (Ray job, hosts, CPUs per host), if any; every other parked host
    is killed (it would hold CPUs the run's own hosts and tasks need)."""
    mine = _WARM_HOSTS.pop(key, None)
    for actors in _WARM_HOSTS.values():
        _kill(actors)
    _WARM_HOSTS.clear()
    return mine


def _artifact_key(setup: Setup) -> tuple[Any, ...] | None:
    """What a converted artifact depends on, when it is safe to reuse: a built-in model, and the
    data's identity (its task follows from it; an .npz by path, size and modification time)."""
    from fedsim.model.builders import MODELS, ArtifactRecipe

    recipe, data = setup.artifact, setup.data
    if not isinstance(recipe, ArtifactRecipe) or data.arrays is not None:
        return None
    name = next((n for n, b in MODELS.items() if b is recipe.builder), None)
    if name is None:
        return None
    stamp = None
    if data.path:
        st = os.stat(data.path)
        stamp = (data.path, st.st_size, st.st_mtime_ns)
    return (
        name,
        recipe.optimizer,
        recipe.seed,
        recipe.checkpoint_format,
        recipe.variant,
        data.name,
        data.data_dir,
        stamp,
        setup.settings.batch_size,
    )


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

    def _put(self, checkpoint: bytes) -> Any:
        """One object-store copy per global checkpoint: a round's model is evaluated, then sent out
        as the next round's starting point, and both calls read the same object."""
        if self._put_cache is None or self._put_cache[0] is not checkpoint:
            self._put_cache = (checkpoint, ray.put(checkpoint))
        return self._put_cache[1]

    def _connect(self) -> None:
        if ray.is_initialized() and _SESSION["owned"] and _SESSION["address"] != self.address:
            shutdown_warm()  # the kept session is another cluster than this run asks for
        if not ray.is_initialized():
            self._owns_ray = connect(self.address)
            if self.keep_warm and self._owns_ray:  # the session outlives this engine
                _SESSION.update(owned=True, address=self.address)
                self._owns_ray = False

    def start(self, setup: Setup) -> Prepared:
        began = time.perf_counter()
        self._connect()
        connected = time.perf_counter()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.num_hosts = h = min(self.requested_hosts or cpus, setup.devices)
        per_host_cpus = min(1.0, cpus / h)  # more hosts than CPUs (one per device) must all be scheduled
        # where this run's hosts are parked after it (warm starts): its Ray session and host shape
        self._pool_key = (ray.get_runtime_context().get_job_id(), h, per_host_cpus)
        warm = _take_warm(self._pool_key)  # parked hosts of another shape are let go either way
        if warm and not self.keep_warm:
            _kill(warm)
            warm = None
        key = _artifact_key(setup) if self.keep_warm else None
        if key is not None and key in _ARTIFACTS:  # converted by an earlier run of this process
            setup = dataclasses.replace(setup, artifact=_ARTIFACTS[key])
        # A one-shot worker on this node (where the data set was found) loads and splits the data and
        # converts the model, putting each host's share straight into the object store. The
        # coordinator process never imports TensorFlow or maps the data (~0.6 GB saved), and the
        # worker exits before the hosts start, so its memory is not counted with theirs.
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        # Not retried: a preparation killed for memory would be killed again, and Ray would retry it forever.
        if warm:  # a warm host prepares: its process has TensorFlow loaded already
            refs = warm[0].prepare.options(num_returns=4 + h).remote(setup, h)
        else:
            task = ray.remote(max_calls=1)(_prepare_remote).options(
                num_returns=4 + h, scheduling_strategy=here, max_retries=0
            )
            refs = task.remote(setup, h)
        try:
            artifact, info, worker_pid = ray.get(refs[:3])
        except RayTaskError as e:
            # Bad data, a partition that cannot be made, a model or artifact that cannot run: the
            # worker's own error, one line, not Ray's wrapping of it with the worker's traceback.
            _retrieved(refs)
            if warm:  # the warm host that prepared is fine: park it again for the next run
                _WARM_HOSTS[self._pool_key] = warm
            raise (e.cause if isinstance(e.cause, Exception) else e) from None
        except (OutOfMemoryError, WorkerCrashedError) as e:
            _retrieved(refs)
            available = psutil.virtual_memory().available / 2**30
            what = "ran out of memory" if isinstance(e, OutOfMemoryError) else "crashed"
            raise EngineError(
                f"preparing the run {what} (loading and splitting the data for {setup.devices} devices, "
                f"converting the model); this node has {available:.1f} GiB available: use fewer "
                "--devices or a smaller data set"
            ) from None
        counts, test_sizes, report = info.pop("label_counts"), info.pop("test_sizes"), info.pop("report")
        if not warm:
            _wait_for_exit(worker_pid)
        if key is not None:
            _ARTIFACTS[key] = artifact
        prepared_at = time.perf_counter()
        fleet_ref, test_refs = refs[3], refs[4:]
        self.test_samples = int(info["test_samples"])
        # A host that dies (killed, out of memory) is restarted by Ray and loaded again from the same
        # refs: the fleet's data and the .tflite stay in the object store (kept alive here for the
        # run), so it comes back whole for the next round. The round it died in is not retried: its
        # devices are recorded as failed.
        actor_cls = ray.remote(_RayDeviceHost).options(
            num_cpus=per_host_cpus, scheduling_strategy="SPREAD", max_restarts=HOST_RESTARTS, max_task_retries=0
        )
        artifact_ref = ray.put(artifact)
        self.actors = warm or [actor_cls.remote(i, setup.settings) for i in range(h)]
        self._host_data = [(fleet_ref, test_refs[i], artifact_ref, setup.settings) for i in range(h)]
        self.host_pids = ray.get([a.load.remote(*self._host_data[i]) for i, a in enumerate(self.actors)])
        # Which Ray node each host landed on (SPREAD places them across nodes).
        self.host_nodes = ray.get([a.node_id.remote() for a in self.actors])
        done = time.perf_counter()
        self.startup_s = {
            "ray": connected - began,
            "prepare": prepared_at - connected,
            "hosts": done - prepared_at,
            "warm": bool(warm),
        }
        prepared = Prepared(artifact, info, None, [], counts, test_sizes, report)
        self.set_costs(prepared, setup.settings)
        return prepared

    def initial_checkpoint(self) -> bytes:
        return ray.get(self.actors[0].initial_checkpoint.remote())

    def evaluate(self, checkpoint: bytes, device_ids: Sequence[int] = ()) -> Evaluation:
        self._await_restarts()
        ref = self._put(checkpoint)
        per_host = self.split(device_ids)

        def ask() -> list[Any]:
            calls = [a.evaluate.remote(ref, per_host.get(h, [])) for h, a in enumerate(self.actors)]
            return ray.get(calls, timeout=self.round_timeout_s)

        try:
            parts = ask()
        except (RayActorError, RayTaskError):
            # A host died between rounds: Ray restarts it, and every host is loaded again (a loaded
            # one is rebuilt from the same data) before asking once more.
            self._restarting.update(range(self.num_hosts))
            self._await_restarts()
            parts = ask()
        return combine_evaluations(parts, self.test_samples)

    def run_round(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], pipeline: HostPipeline
    ) -> RoundResult:
        self._await_restarts()
        checkpoint_ref = self._put(global_checkpoint)  # one copy in the object store, read by every host
        calls = [
            (h, mine, self.actors[h].run_round.remote(round_num, checkpoint_ref, mine, pipeline.only(mine)))
            for h, mine in sorted(self.split(device_ids).items())
        ]
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
                result.extend(ray.get(ref))
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
            _kill(_WARM_HOSTS.pop(self._pool_key, []))
            _WARM_HOSTS[self._pool_key] = alive  # parked for the next run
        else:
            _kill(alive)
        self.actors = []
        self._host_data = []
        self._put_cache = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False
