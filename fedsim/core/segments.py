"""What a device keeps across its rounds (an error-feedback residual, a personal model), stored by the
host that runs it, keyed by device id.

A host that trains devices writes what they keep this round into one segment file: each device's
arrays back to back, then a footer saying where each lies (JSON, columnar: each layout of arrays once,
a start offset per device), its length and a magic string, so a segment is written in one pass
without holding the round's state in memory, and a device's arrays are read back with one `pread`
each (no mapping, no whole-file read). A device's latest state is in
exactly one segment; which one is the run's state index (fedsim.loop.devicestate), committed with
the round, so a kill between the two loses nothing and mixes nothing, and any host reads any
device's state (the segments sit in the run folder, `device_state/`). Segments are not fsynced here:
the run's writer syncs them before the round that names them commits.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MAGIC = b"FEDSIMDS1"
SUFFIX = ".seg"
ALIGN = 4096  # every array starts on a 4 KiB boundary (direct I/O needs it; at most 4 KiB an array lost)


class StateError(ValueError):
    """A segment that cannot be read (damaged, truncated, not a segment)."""


def segment_name(round_num: int, host: int) -> str:
    """A new segment's file name: the round (or model version) that wrote it, the host, a nonce."""
    return f"{round_num:08d}-h{host:03d}-{uuid.uuid4().hex[:10]}{SUFFIX}"


def segment_round(name: str) -> int | None:
    """The round a segment's name says it was written in, or None for any other file."""
    head = name.split("-", 1)[0]
    return int(head) if name.endswith(SUFFIX) and head.isdigit() else None


def aligned(nbytes: int, zeroed: bool = False) -> np.ndarray:
    """A uint8 buffer of `nbytes` whose address is a multiple of ALIGN (what O_DIRECT needs)."""
    raw = (np.zeros if zeroed else np.empty)(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes]


def _round_up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _open_direct(path: Path, flags: int) -> tuple[int, bool]:
    """(descriptor, direct): the file opened for direct I/O where the filesystem has it (bytes go
    between the disk and this process without a copy through the page cache), else plainly (tmpfs)."""
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, flags | direct, 0o644), True
        except OSError:
            pass
    return os.open(path, flags, 0o644), False


class SegmentWriter:
    """One segment, written as devices finish: `add` appends a device's arrays, `close` the footer.

    Every array starts on a 4 KiB boundary, and a device's arrays are written in one aligned block,
    directly to the disk where the filesystem allows (O_DIRECT): copying hundreds of megabytes a round
    into the page cache cost the hosts more CPU than the arithmetic that made them. The writes happen on
    a thread of the writer's own, handed a few megabytes of devices at a time (a bounded queue), so the
    host trains the next devices while the disk takes these ones' state."""

    BATCH = 4 << 20  # bytes of devices' arrays handed to the writer thread at once (or all at close)
    QUEUE = 8  # batches waiting to be written, at most (bounds the memory the writer holds)

    def __init__(self, path: Path) -> None:
        self.path = path
        # the footer, columnar: each distinct layout of arrays (key, dtype, shape) once, and per device
        # its id, its layout and where its first array starts (the others follow on block boundaries)
        self.schemas: dict[tuple[tuple[str, str, tuple[int, ...]], ...], int] = {}
        self.ids: list[int] = []
        self.layout: list[int] = []
        self.starts: list[int] = []
        self._at = 0
        self._batch: list[tuple[int, list[tuple[int, np.ndarray]]]] = []  # (start, arrays) per device
        self._queue: queue.Queue[list[tuple[int, list[tuple[int, np.ndarray]]]] | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._fd = -1

    def add(self, device_id: int, values: Mapping[str, np.ndarray]) -> None:
        """Place a device's arrays after the last one's (the entry is known at once) and queue them."""
        if self._error is not None:
            raise self._error
        chunks = []
        start = self._at = _round_up(self._at)
        schema = []
        for key, value in values.items():
            array = np.ascontiguousarray(value)
            self._at = _round_up(self._at)
            chunks.append((self._at - start, array))
            schema.append((key, array.dtype.str, tuple(int(n) for n in array.shape)))
            self._at += array.nbytes
        self.ids.append(int(device_id))
        self.layout.append(self.schemas.setdefault(tuple(schema), len(self.schemas)))
        self.starts.append(start)
        self._batch.append((start, chunks))
        if self._at - self._batch[0][0] >= self.BATCH:
            self._hand_off()

    def _hand_off(self) -> None:
        """Queue the devices added since the last hand-off for the writer thread, as one item: waking
        the thread once per device cost the host more (the thread's turn at the interpreter) than the
        writes themselves."""
        if self._queue is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd, _ = _open_direct(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            self._queue = queue.Queue(self.QUEUE)
            self._thread = threading.Thread(target=self._write, name="fedsim-segment", daemon=True)
            self._thread.start()
        batch, self._batch = self._batch, []
        self._queue.put(batch)

    def _write(self) -> None:
        """Write what is queued, every device waiting at that moment in one call (one large write keeps
        the disk busier than many of one device each)."""
        assert self._queue is not None
        done = False
        while not done:
            items = [self._queue.get()]
            while items[-1] is not None and len(items) < self.QUEUE and not self._queue.empty():
                items.append(self._queue.get())
            done = items[-1] is None
            if self._error is not None:
                continue  # (a failed write: the rest is dropped, and add or close raises it)
            try:
                pieces: list[np.ndarray] = []
                offset = None
                for batch in items:
                    for start, chunks in batch or ():
                        offset = start if offset is None else offset
                        for _, array in chunks:
                            pieces += self._pieces(array.reshape(-1).view(np.uint8))
                if offset is not None:
                    self._pwritev(pieces, offset)
            except BaseException as e:
                self._error = e

    @staticmethod
    def _pieces(data: np.ndarray) -> list[np.ndarray]:
        """`data` as aligned pieces ending on a block boundary: straight from the array where it is
        aligned, its last block (or all of it) through a zero-padded copy."""
        body = len(data) // ALIGN * ALIGN if data.ctypes.data % ALIGN == 0 else 0
        out = [data[:body]] if body else []
        if body < len(data):
            block = aligned(_round_up(len(data) - body), zeroed=True)
            block[: len(data) - body] = data[body:]
            out.append(block)
        return out

    def _pwritev(self, pieces: list[np.ndarray], offset: int) -> None:
        """The pieces back to back from `offset`, in as few calls as the system allows."""
        views = [p.data for p in pieces]
        limit = getattr(os, "IOV_MAX", 1024)
        while views:
            batch = views[:limit]
            done = os.pwritev(self._fd, batch, offset)
            offset += done
            while batch and done >= len(batch[0]):  # drop what was written whole
                done -= len(batch[0])
                batch.pop(0)
                views.pop(0)
            if done:  # (a short write inside a piece: the rest of it next)
                views[0] = views[0][done:]

    def _pwrite(self, block: np.ndarray, offset: int) -> None:
        self._pwritev([block], offset)

    def close(self) -> list[int]:
        """Wait for the queued arrays, write the footer and close; the device ids it holds (none: no
        file was made)."""
        if self._batch:
            self._hand_off()
        if self._queue is None:
            return []
        self._queue.put(None)
        assert self._thread is not None
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            schemas = [[[k, t, list(shape)] for k, t, shape in schema] for schema in self.schemas]
            columns = {"schemas": schemas, "ids": self.ids, "layout": self.layout, "starts": self.starts}
            body = json.dumps(columns).encode()
            tail = 8 + len(MAGIC)
            spaces = -(len(body) + tail) % ALIGN  # leading spaces: the footer ends the file on a boundary
            footer = b" " * spaces + body
            block = aligned(len(footer) + tail)  # (every byte set below)
            block[:] = np.frombuffer(footer + struct.pack("<Q", len(footer)) + MAGIC, np.uint8)
            self._pwrite(block, _round_up(self._at))
        finally:
            os.close(self._fd)
            self._fd = -1
            self._queue = None
        return sorted(self.ids)


class SegmentReader:
    """A segment's footer, read once; a device's arrays read with one pread each (direct from the disk
    where the filesystem allows: a state is read once a round, and copying it through the page cache
    would cost what writing it that way did)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = self.direct = -1
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise StateError(f"device state segment {path} cannot be opened ({e.strerror})") from None
        try:
            size = os.fstat(self.fd).st_size
            tail = os.pread(self.fd, 8 + len(MAGIC), size - 8 - len(MAGIC)) if size >= 8 + len(MAGIC) else b""
            if len(tail) != 8 + len(MAGIC) or tail[8:] != MAGIC:
                raise StateError(f"device state segment {path} is truncated or not a segment")
            (length,) = struct.unpack("<Q", tail[:8])
            start = size - 8 - len(MAGIC) - length
            if start < 0:
                raise StateError(f"device state segment {path} is truncated")
            footer = json.loads(os.pread(self.fd, length, start))
            self.schemas = [[(k, np.dtype(t), tuple(shape)) for k, t, shape in schema] for schema in footer["schemas"]]
            self.position = {d: i for i, d in enumerate(footer["ids"])}
            self.layout, self.starts = footer["layout"], footer["starts"]
            self.data_end = start
        except (ValueError, KeyError, TypeError) as e:
            self.close()
            raise StateError(f"device state segment {path} is damaged ({e})") from None
        except StateError:
            self.close()
            raise
        fd, direct = _open_direct(path, os.O_RDONLY)
        if direct:
            self.direct = fd
        else:
            os.close(fd)

    def offsets(self, device_id: int) -> dict[str, tuple[np.dtype[Any], tuple[int, ...], int]]:
        """Where each of a device's arrays lies: key -> (dtype, shape, offset)."""
        i = self.position.get(int(device_id))
        if i is None:
            raise StateError(f"device state segment {self.path} holds no state of device {device_id}")
        out, at = {}, int(self.starts[i])
        for key, dtype, shape in self.schemas[self.layout[i]]:
            at = _round_up(at)
            out[key] = (dtype, shape, at)
            at += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        return out

    def read(self, device_id: int) -> dict[str, np.ndarray]:
        out = {}
        for key, (dtype, shape, offset) in self.offsets(device_id).items():
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset + nbytes > self.data_end:
                raise StateError(f"device state segment {self.path}: {key} of device {device_id} is cut short")
            out[key] = self._pread(offset, nbytes).view(dtype).reshape(shape)
        return out

    def _pread(self, offset: int, nbytes: int) -> np.ndarray:
        if self.direct >= 0 and offset % ALIGN == 0:
            block = aligned(_round_up(nbytes))
            got = os.preadv(self.direct, [block.data], offset)
            if got >= nbytes:
                return block[:nbytes]
        raw = os.pread(self.fd, nbytes, offset)
        if len(raw) != nbytes:
            raise StateError(f"device state segment {self.path} is cut short at {offset}")
        return np.frombuffer(raw, np.uint8)

    def close(self) -> None:
        for name in ("fd", "direct"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __del__(self) -> None:
        self.close()
