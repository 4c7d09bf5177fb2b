"""The Ray session fedsim keeps in this process: joining a cluster or starting a local one, and the
hosts parked between runs (warm starts). The only modules that import Ray are this and fedsim.engine.ray.

Warm starts: a RayEngine made with keep_warm (fedsim.run's) leaves Ray running and parks its hosts in
the session when it closes, so the next run in this process (a notebook's next cell, a sweep's next
point) reuses both instead of starting Ray and importing TensorFlow again. Torn down at exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import psutil
import ray


class RayConnectionError(ConnectionError):
    """The Ray cluster named by --address could not be joined."""


# What an HTTP/2 client says first: the connection preface and an empty SETTINGS frame. A Ray cluster's
# GCS (and a Ray client server) speaks gRPC, which answers with a SETTINGS frame of its own (type 4).
_HTTP2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast, in seconds, on a host:port nobody listens on or where something other than a Ray
    cluster answers (the dashboard's port, 8265, is the likely one); ray.init would retry forever."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: Ray resolves and reports them itself
    with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s) as conn:
        conn.settimeout(timeout_s)
        try:
            conn.sendall(_HTTP2_HELLO)
            reply = conn.recv(64)
        except OSError:  # (socket.timeout is one)
            reply = b""
    if len(reply) >= 9 and reply[3] == 0x04:
        return
    said = f"it answered {reply[:40]!r}" if reply else f"it said nothing within {timeout_s:g} s"
    raise RayConnectionError(
        f"--address {address}: something listens there but it is not a Ray cluster ({said}); a cluster's "
        "address is its GCS port (6379 unless changed), not the dashboard's (8265)"
    )


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
        except RayConnectionError:
            raise
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
    # address="local": a private instance, never a cluster that Ray's current-cluster file happens to
    # name (a stale one from an earlier `ray start` would make ray.init() hang trying to join it)
    ray.init(address="local", include_dashboard=False, **kwargs)
    return True


class RaySession:
    """The Ray this process started and keeps (`owned`, joined at `address`), and the hosts parked in
    it for the next run, by (Ray job, hosts, CPUs per host)."""

    def __init__(self) -> None:
        self.owned = False
        self.address: str | None = None
        self.parked: dict[tuple[Any, ...], list[Any]] = {}

    def keep(self, address: str | None) -> None:
        """This process started Ray at `address` and keeps it for the runs after this one."""
        self.owned, self.address = True, address

    def take(self, key: tuple[Any, ...]) -> list[Any] | None:
        """The parked hosts under `key`, if any; every other parked host is killed (it would hold CPUs
        the run's own hosts and tasks need)."""
        mine = self.parked.pop(key, None)
        for actors in self.parked.values():
            kill(actors)
        self.parked.clear()
        return mine

    def park(self, key: tuple[Any, ...], actors: list[Any]) -> None:
        kill(self.parked.pop(key, []))
        self.parked[key] = actors

    def shutdown(self) -> None:
        """Kill the parked hosts and stop the Ray session kept for warm starts (also run at exit)."""
        for actors in self.parked.values():
            kill(actors)
        self.parked.clear()
        if self.owned and ray.is_initialized():
            ray.shutdown()
        self.owned, self.address = False, None

    def disconnect(self) -> None:
        """Shut down the Ray this process runs (see `connect`), and with it any parked hosts."""
        self.parked.clear()
        self.owned, self.address = False, None
        if ray.is_initialized():
            ray.shutdown()


SESSION = RaySession()
atexit.register(SESSION.shutdown)


def shutdown_warm() -> None:
    SESSION.shutdown()


def disconnect() -> None:
    SESSION.disconnect()


def kill(actors: Sequence[Any]) -> None:
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # gone already (with an earlier Ray session, say)
            pass


def retrieved(refs: Sequence[Any]) -> None:
    """Fetch the failed results of a task once, so Ray does not print each as an "unhandled error"
    when it is collected (the Ray session may outlive the run: warm starts)."""
    for ref in refs:
        try:
            ray.get(ref, timeout=10)
        except Exception:  # the failure itself, already reported
            pass


def wait_for_exit(pid: int, timeout_s: float = 15.0) -> None:
    """Wait until a finished one-shot worker of this node has exited (Ray ends it after max_calls)."""
    deadline = time.monotonic() + timeout_s
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
