"""Calls to the hosts on the coordinator's machine over a Unix socket instead of one Ray task each.

A host that joined the exchange (fedsim.engine.exchange: it runs on this machine) serves its calls
in one long Ray call, `serve`, that reads requests from the coordinator's socket and answers each on
it, in order; the coordinator writes a request and reads the answer (large arrays still go through
the exchange's files). A Ray actor task costs the caller and the actor ~2 ms of CPU each way on a
busy 2-core machine, a message on a socket tens of microseconds: alternating Ray runs of a FedBuff-
sized call (2 hosts, 8 ms of work each) took 16 ms of wall and 25 ms of CPU a call as Ray tasks, 12
and 21 ms through the socket.

While a host serves, Ray queues any other call to it behind `serve`: the engine stops serving
(`stop`) before calling a host through Ray (evaluation, loading, closing), the host answers what it
was sent and returns, and the next round's calls start a new serving (a `Link`;
fedsim.engine.ray_host.Serving keeps the serving calls). A host that dies
closes its end (EOFError: `HostGone`); an exception in a call is answered as its text
(`HostCallError`). No Ray here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


class HostGone(ConnectionError):
    """The host's end of the socket closed (the process died or was killed)."""


class HostCallError(RuntimeError):
    """A call raised on the host; the message is its type and text."""


@dataclass
class Link:
    """One serving of one host: its connection, the requests sent and the answers read, not yet taken."""

    conn: Connection
    sent: int = 0
    answers: dict[int, tuple[bool, Any]] = field(default_factory=dict)
    gone: bool = False


@dataclass(frozen=True)
class Ticket:
    """A request on a link, and its answer."""

    link: Link
    seq: int

    def answer(self, timeout_s: float | None) -> Any:
        """The answer (answers to later requests read on the way are kept); TimeoutError, HostGone or
        HostCallError."""
        link, deadline = self.link, None if timeout_s is None else time.monotonic() + timeout_s
        while self.seq not in link.answers:
            if link.gone:
                raise HostGone("the host's connection closed")
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                ready = link.conn.poll(left)
                seq, ok, value = link.conn.recv() if ready else (0, False, None)
            except (EOFError, OSError):  # (its end closed; or ours, dropped)
                link.gone = True
                continue
            if not ready:
                raise TimeoutError
            link.answers[seq] = (ok, value)
        ok, value = link.answers.pop(self.seq)
        if not ok:
            raise HostCallError(value)
        return value


class Channels:
    """The coordinator's end: a listening socket in the exchange folder, one link per serving host."""

    def __init__(self, folder: Path, token: str) -> None:
        self.path, self.token = str(folder / "channel.sock"), token
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(64)
        self.links: dict[int, Link] = {}  # the hosts serving now

    def accept(self, hosts: set[int], timeout_s: float, ended: Callable[[], set[int]] = set) -> None:
        """Wait up to `timeout_s` for `hosts` (asked to serve) to connect, and no longer for those whose
        serving `ended` says has ended (a host that was not loaded); those that do not stay on Ray."""
        deadline = time.monotonic() + timeout_s
        while hosts - set(self.links) - ended() and time.monotonic() < deadline:
            self.sock.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                s, _ = self.sock.accept()
            except TimeoutError:
                continue
            s.setblocking(True)
            conn = Connection(s.detach())
            try:
                said = conn.recv() if conn.poll(max(0.01, deadline - time.monotonic())) else None
            except (EOFError, OSError):  # (it went away before saying who it is)
                said = None
            if isinstance(said, tuple) and len(said) == 2 and said[0] == self.token and said[1] in hosts:
                self.links[said[1]] = Link(conn)
                continue
            conn.close()

    def call(self, host: int, method: str, *args: Any) -> Ticket:
        link = self.links[host]
        link.sent += 1
        try:
            link.conn.send((link.sent, method, args))
        except OSError:  # the host closed its end: what it answered before is still read, then its
            pass  # end's EOF makes this request's answer raise HostGone
        return Ticket(link, link.sent)

    def stop(self, host: int | None = None) -> None:
        """`host` (every host: None) stops serving once it has answered what it was sent."""
        for h in [host] if host is not None else list(self.links):
            link = self.links.pop(h, None)
            if link is not None and not link.gone:
                try:
                    link.conn.send(None)
                except OSError:  # (as in `call`: what it answered before is still read, then its EOF)
                    pass

    def drop(self, host: int) -> None:
        """Forget a host that died or was killed (its link's pending answers raise HostGone)."""
        link = self.links.pop(host, None)
        if link is not None:
            link.gone = True
            link.conn.close()

    def close(self) -> None:
        self.stop()
        self.sock.close()


def serve(host: Any, path: str, token: str, index: int) -> None:
    """The host's end: answer the coordinator's requests (`host.<method>(*args)`) until it says stop."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    conn = Connection(s.detach())
    try:
        conn.send((token, index))
        while True:
            request = conn.recv()
            if request is None:
                return
            seq, method, args = request
            try:
                value = getattr(host, method)(*args)
            except Exception as e:  # answered as text, as Ray answers a task's error
                conn.send((seq, False, f"{type(e).__name__}: {e}"))
            else:
                conn.send((seq, True, value))
    except (EOFError, OSError):  # the coordinator is gone
        return
    finally:
        conn.close()
