"""What a device keeps across its rounds (an error-feedback residual, a personal model), stored by the
host that runs it, keyed by device id.

A host that trains devices writes what they keep this round into one segment file: each device's
arrays back to back, then a footer naming where each lies (JSON), its length and a magic string, so a
segment is written in one pass without holding the round's state in memory, and a device's arrays are
read back with one `pread` each (no mapping, no whole-file read). A device's latest state is in
exactly one segment; which one is the run's state index (fedsim.loop.devicestate), committed with
the round, so a kill between the two loses nothing and mixes nothing, and any host reads any
device's state (the segments sit in the run folder, `device_state/`). Segments are not fsynced here:
the run's writer syncs them before the round that names them commits.
"""

from __future__ import annotations

import json
import os
import struct
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

MAGIC = b"FEDSIMDS1"
SUFFIX = ".seg"
ALIGN = 64  # each array starts on a 64-byte boundary


class StateError(ValueError):
    """A segment that cannot be read (damaged, truncated, not a segment)."""


def segment_name(round_num: int, host: int) -> str:
    """A new segment's file name: the round (or model version) that wrote it, the host, a nonce."""
    return f"{round_num:08d}-h{host:03d}-{uuid.uuid4().hex[:10]}{SUFFIX}"


def segment_round(name: str) -> int | None:
    """The round a segment's name says it was written in, or None for any other file."""
    head = name.split("-", 1)[0]
    return int(head) if name.endswith(SUFFIX) and head.isdigit() else None


class SegmentWriter:
    """One segment, written as devices finish: `add` appends a device's arrays, `close` the footer."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: BinaryIO | None = None
        self.entries: dict[int, dict[str, list[Any]]] = {}
        self._at = 0

    def add(self, device_id: int, values: Mapping[str, np.ndarray]) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "wb")  # noqa: SIM115 - held open across devices, closed by close()
        entry = {}
        for key, value in values.items():
            array = np.ascontiguousarray(value)
            pad = -self._at % ALIGN
            if pad:
                self._f.write(b"\0" * pad)
                self._at += pad
            self._f.write(array.reshape(-1).view(np.uint8).data)
            entry[key] = [array.dtype.str, list(array.shape), self._at]
            self._at += array.nbytes
        self.entries[int(device_id)] = entry

    def close(self) -> list[int]:
        """Write the footer and close; the device ids it holds (none: no file was made)."""
        if self._f is None:
            return []
        footer = json.dumps({"devices": {str(d): e for d, e in self.entries.items()}}).encode()
        self._f.write(footer + struct.pack("<Q", len(footer)) + MAGIC)
        self._f.close()
        self._f = None
        return sorted(self.entries)


class SegmentReader:
    """A segment's footer, read once; a device's arrays read with one pread each."""

    def __init__(self, path: Path) -> None:
        self.path = path
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
            self.devices: dict[int, dict[str, list[Any]]] = {int(d): e for d, e in footer["devices"].items()}
            self.data_end = start
        except (ValueError, KeyError, TypeError) as e:
            os.close(self.fd)
            raise StateError(f"device state segment {path} is damaged ({e})") from None
        except StateError:
            os.close(self.fd)
            raise

    def read(self, device_id: int) -> dict[str, np.ndarray]:
        entry = self.devices.get(int(device_id))
        if entry is None:
            raise StateError(f"device state segment {self.path} holds no state of device {device_id}")
        out = {}
        for key, (dtype, shape, offset) in entry.items():
            dt = np.dtype(dtype)
            nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
            raw = os.pread(self.fd, nbytes, offset)
            if len(raw) != nbytes or offset + nbytes > self.data_end:
                raise StateError(f"device state segment {self.path}: {key} of device {device_id} is cut short")
            out[key] = np.frombuffer(raw, dt).reshape(shape)
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


class Shelf:
    """A host's access to the run's device state folder: the segments it reads (a few kept open) and
    the one it writes this round."""

    def __init__(self, folder: Path | None, host: int, keep_open: int = 16) -> None:
        self.folder = folder
        self.host = host
        self.keep_open = keep_open
        self._readers: OrderedDict[str, SegmentReader] = OrderedDict()

    def read(self, segment: str, device_id: int) -> dict[str, np.ndarray]:
        if self.folder is None:
            raise StateError(f"device {device_id} has state in {segment}, but this host has no state folder")
        reader = self._readers.pop(segment, None) or SegmentReader(self.folder / segment)
        self._readers[segment] = reader
        while len(self._readers) > self.keep_open:
            self._readers.popitem(last=False)[1].close()
        return reader.read(device_id)

    def writer(self, round_num: int) -> SegmentWriter:
        if self.folder is None:
            raise StateError("a device kept state, but this host has no state folder")
        return SegmentWriter(self.folder / segment_name(round_num, self.host))

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            reader = self._readers.pop(name, None)
            if reader is not None:
                reader.close()

    def close(self) -> None:
        self.forget(list(self._readers))
