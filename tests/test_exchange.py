"""Large arrays between the coordinator and the hosts on its machine through shared-memory files
(fedsim.engine.exchange): what goes through a file comes back bit for bit and leaves no file behind,
what cannot be written stays in Ray's reply, and a Ray run gives the same tables and checkpoint with
files and calls over the socket (fedsim.engine.channel) as through Ray's object store and tasks."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import fedsim
from fedsim.engine import exchange
from fedsim.engine.base import DeviceReport, RoundResult
from fedsim.strategies.base import Aggregate


def _result(rng):
    rows = rng.standard_normal((3, 40_000)).astype(np.float32)  # 480 KB: through a file
    small = rng.standard_normal(100)  # 800 bytes: stays in the reply
    partials = [
        Aggregate(3, 3.0, rows=rows, device_ids=np.arange(3)),
        Aggregate(2, 2.0, weighted_sum=small),
    ]
    return RoundResult([DeviceReport(0, 0, 10, "ok")], partials), rows, small


def test_arrays_go_through_files_and_come_back_bit_for_bit():
    ex = exchange.Exchange.open()
    assert ex is not None
    try:
        assert exchange.joins(ex.folder, ex.token) and not exchange.joins(ex.folder, "another run")
        result, rows, small = _result(np.random.default_rng(0))
        sent = exchange.send(result, ex.folder, "host0-1")
        assert isinstance(sent.partials[0].rows, exchange.Shared)  # (what Ray would carry: a name)
        assert sent.partials[1].weighted_sum is small
        back = ex.receive(sent)
        assert back.partials[0].rows.tobytes() == rows.tobytes() and back.partials[0].rows.shape == rows.shape
        assert sorted(f.name for f in ex.folder.iterdir()) == [exchange.MARKER]  # read and removed
        # (mapped, not copied: still readable once its file is gone, and never changed in place)
        assert back.partials[0].rows.tobytes() == rows.tobytes() and not back.partials[0].rows.flags.writeable
        # a checkpoint is written once for the calls that restore it, removed after the last of them
        data = b"checkpoint" * 20_000
        path = ex.checkpoint(data, 2)
        assert path is not None and ex.checkpoint(data, 0) == path and path.read_bytes() == data
        ex.collected(path)
        assert path.exists()
        ex.collected(path)
        assert not path.exists()
        # a folder that cannot be written to: the arrays stay in the reply
        result, rows, _ = _result(np.random.default_rng(1))
        kept = exchange.send(result, ex.folder / "gone", "host0-2")
        assert kept.partials[0].rows is rows
    finally:
        ex.close()
    assert not ex.folder.exists()


def test_an_exchange_folder_left_by_a_killed_coordinator_is_removed():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = exchange.SHM / f"{exchange.PREFIX}{int(dead.stdout)}-leftover"
    orphan.mkdir()
    (orphan / "global-1.ckpt").write_bytes(b"x")
    mine = exchange.Exchange.open()
    assert mine is not None
    try:
        assert not orphan.exists() and mine.folder.exists()
    finally:
        mine.close()


@pytest.mark.ray
def test_a_ray_run_gives_the_same_results_through_files_and_through_the_object_store(tmp_path, monkeypatch):
    settings = dict(
        dataset="toy_images",
        toy_samples=40,
        devices=12,
        hosts=2,
        rounds=8,
        fleet="skewed",
        mode="async",
        concurrency=6,
        buffer=2,
        seed=4,
        progress=False,
    )
    received = []
    real = exchange.Exchange.receive

    def receive(self, result):
        received.extend(getattr(p, f) for p in result.partials for f in exchange.FIELDS)
        return real(self, result)

    monkeypatch.setattr(exchange.Exchange, "receive", receive)
    from fedsim.engine import channel

    over_socket = []
    call = channel.Channels.call
    monkeypatch.setattr(channel.Channels, "call", lambda self, h, *a: over_socket.append(h) or call(self, h, *a))
    runs = {}
    for transport in ("files", "objects"):
        monkeypatch.setenv("FEDSIM_EXCHANGE", "on" if transport == "files" else "off")
        before = set(exchange.SHM.glob(f"{exchange.PREFIX}{os.getpid()}-*"))
        runs[transport] = fedsim.run(out=str(tmp_path / transport), **settings)
        assert set(exchange.SHM.glob(f"{exchange.PREFIX}{os.getpid()}-*")) == before  # nothing left behind
    assert any(isinstance(r, exchange.Shared) for r in received)  # the hosts did hand rows through files
    assert set(over_socket) == {0, 1}  # ... and took their calls over the socket
    files, objects = runs["files"], runs["objects"]
    columns = ["round", "test_accuracy", "train_loss", "devices_accepted", "staleness_mean", "sim_elapsed_s"]
    assert files.rounds[columns].equals(objects.rounds[columns])
    digest = [hashlib.sha256((r.path / "global.ckpt").read_bytes()).hexdigest() for r in (files, objects)]
    assert digest[0] == digest[1]
