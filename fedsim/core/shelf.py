"""A host's access to the run's device state folder (fedsim.core.segments): the segments it reads,
the one it writes, and what it wrote last in memory."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from fedsim.core.segments import SegmentReader, SegmentWriter, StateError, segment_name

CACHE_BYTES = 256 * 2**20  # a host keeps this much of the state it wrote last in memory


class Shelf:
    """A host's access to the run's device state folder: the segments it reads (a few kept open), the
    one it writes this round, and the state it wrote most recently, in memory (at most `cache_bytes`,
    read-only arrays): devices are dealt to the same host round after round while the cohort and
    their costs stay the same, and their state is then read from memory, not from the disk.
    Thread-safe (the host reads ahead on a thread of its own)."""

    def __init__(self, folder: Path | None, host: int, keep_open: int = 128, cache_bytes: int = CACHE_BYTES) -> None:
        self.folder = folder
        self.host = host
        self.keep_open = keep_open
        self.cache_bytes = cache_bytes
        self._readers: OrderedDict[str, SegmentReader] = OrderedDict()
        self._cache: OrderedDict[tuple[str, int], dict[str, np.ndarray]] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()

    def read(self, segment: str, device_id: int) -> dict[str, np.ndarray]:
        if self.folder is None:
            raise StateError(f"device {device_id} has state in {segment}, but this host has no state folder")
        with self._lock:
            hit = self._cache.get((segment, device_id))
            if hit is not None:
                self._cache.move_to_end((segment, device_id))
                return hit
            reader = self._readers.pop(segment, None) or SegmentReader(self.folder / segment)
            self._readers[segment] = reader
            while len(self._readers) > self.keep_open:
                self._readers.popitem(last=False)[1].close()
        return reader.read(device_id)

    def remember(self, segment: str, device_id: int, values: Mapping[str, np.ndarray]) -> None:
        """Keep what a device just stored in `segment` in memory too (read-only from now on)."""
        size = sum(v.nbytes for v in values.values())
        if size > self.cache_bytes:
            return
        kept = {}
        for key, value in values.items():
            value = value.view()
            value.flags.writeable = False
            kept[key] = value
        with self._lock:
            self._cache[(segment, device_id)] = kept
            self._cached += size
            while self._cached > self.cache_bytes:
                _, dropped = self._cache.popitem(last=False)
                self._cached -= sum(v.nbytes for v in dropped.values())

    def writer(self, round_num: int) -> SegmentWriter:
        if self.folder is None:
            raise StateError("a device kept state, but this host has no state folder")
        return SegmentWriter(self.folder / segment_name(round_num, self.host))

    def forget(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                reader = self._readers.pop(name, None)
                if reader is not None:
                    reader.close()

    def close(self) -> None:
        self.forget(list(self._readers))
        with self._lock:
            self._cache.clear()
            self._cached = 0
