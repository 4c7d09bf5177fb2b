"""Calls to a host over the coordinator's socket (fedsim.engine.channel), with a host served on a
thread: answers in order and taken in any order, a host's exception, a host that goes away, a host
too slow, and a stop that lets the host answer what it was sent."""

import socket
import threading
import time
from multiprocessing.connection import Connection

import pytest

from fedsim.engine import channel


class Host:
    def __init__(self):
        self.calls = []

    def run_round(self, n, delay=0.0):
        time.sleep(delay)
        self.calls.append(n)
        return {"round": n}

    def broken(self):
        raise ValueError("no data loaded")

    def die(self):
        raise SystemExit  # (the serving ends without an answer and its end closes, as when the process dies)


def _serve(host, path, token, index):
    try:
        channel.serve(host, path, token, index)
    except SystemExit:  # (Host.die: the serving closed its end on the way out)
        pass


def _serving(tmp_path, index=0):
    channels = channel.Channels(tmp_path, "token")
    host = Host()
    thread = threading.Thread(target=_serve, args=(host, channels.path, "token", index), daemon=True)
    thread.start()
    channels.accept({index}, 10.0)
    assert index in channels.links
    return channels, host, thread


def test_answers_come_in_order_and_are_taken_in_any_order(tmp_path):
    channels, host, thread = _serving(tmp_path)
    tickets = [channels.call(0, "run_round", n) for n in (1, 2, 3)]
    assert tickets[2].answer(5.0) == {"round": 3}  # (the first two are read on the way and kept)
    assert [t.answer(5.0) for t in tickets[:2]] == [{"round": 1}, {"round": 2}]
    assert host.calls == [1, 2, 3]
    with pytest.raises(channel.HostCallError, match="ValueError: no data loaded"):
        channels.call(0, "broken").answer(5.0)
    with pytest.raises(TimeoutError):
        channels.call(0, "run_round", 4, 1.0).answer(0.05)
    late = channels.call(0, "run_round", 5)
    channels.stop()  # the host answers what it was sent, then returns
    thread.join(5.0)
    assert not thread.is_alive() and late.answer(5.0) == {"round": 5}
    channels.close()


def test_a_host_that_goes_away_is_host_gone(tmp_path):
    channels, _, thread = _serving(tmp_path, index=1)
    answered = channels.call(1, "run_round", 1)
    pending = [channels.call(1, "die")]
    thread.join(5.0)  # its end closed: a request sent now fails, and what it answered before is still read
    pending.append(channels.call(1, "run_round", 2))
    assert answered.answer(5.0) == {"round": 1}
    for ticket in pending:
        with pytest.raises(channel.HostGone):
            ticket.answer(5.0)
    channels.drop(1)
    assert 1 not in channels.links
    channels.close()
    thread.join(5.0)


def test_a_stop_sent_to_a_host_that_closed_its_end_leaves_its_answers_readable(tmp_path):
    channels, _, thread = _serving(tmp_path)
    answered = channels.call(0, "run_round", 1)
    gone = channels.call(0, "die")
    thread.join(5.0)
    channels.stop()  # (the stop cannot be sent: its end is closed)
    assert answered.answer(5.0) == {"round": 1}
    with pytest.raises(channel.HostGone):
        gone.answer(5.0)
    channels.close()


def test_a_stranger_or_a_host_that_never_connects_is_not_linked(tmp_path):
    channels = channel.Channels(tmp_path, "token")
    thread = threading.Thread(target=channel.serve, args=(Host(), channels.path, "wrong", 0), daemon=True)
    thread.start()
    began = time.monotonic()
    channels.accept({0}, 0.5)
    assert channels.links == {} and time.monotonic() - began < 5
    channels.accept({1}, 5.0, ended=lambda: {1})  # its serving ended before it connected: no wait
    assert channels.links == {}
    for greeting in (None, "not a tuple"):  # one that goes away, one that says something else
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(channels.path)
        if greeting is not None:
            Connection(s.detach()).send(greeting)
        else:
            s.close()
        channels.accept({2}, 0.5)
        assert channels.links == {}
    channels.close()
