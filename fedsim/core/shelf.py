"""A host's access to the run's device state folder (fedsim.core.segments): the segments it reads,
the one it writes, and what it wrote last in memory."""

from __future__ import annotations

import mmap
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from fedsim.core.segments import SegmentReader, SegmentWriter, StateError, segment_name

CACHE_BYTES = 256 * 2**20  # a host keeps this much of the state it wrote last in memory (--state-cache-mb)
SLAB_BYTES = 4 * 2**20  # the cache copies states into blocks of this size (or one state's, if larger)
LOOSE_BYTES = 64 * 2**10  # a state this large is cached as it is (an allocation of its own), not copied
_ALIGN = 64  # each cached array starts on a multiple of this (any dtype's alignment)


class _Segment:
    """The cached states a host wrote into one segment: copied into whole anonymous mappings (slabs),
    so that thousands of small states neither scatter over the process's heap (where the allocator
    keeps every page they and the round's passing arrays touched: ~4x their size at 10,000 devices)
    nor outlive their segment: a slab goes back to the system whole when the last state in it is
    replaced (devices run in the same order round after round, so last round's slabs empty as this
    round's fill), and all of a segment's when it is evicted."""

    def __init__(self) -> None:
        self.slabs: list[np.ndarray | None] = []  # None: a slab given back
        self.live: list[int] = []  # states cached in each slab
        self.used = 0  # bytes used in the last slab
        self.bytes = 0  # bytes of its slabs and large states
        self.devices: dict[int, int] = {}  # whose cached state is this segment's -> its slab (-1: large)
        self.loose: dict[int, int] = {}  # device -> bytes of a large state kept as it was
        self.owned: dict[int, dict[str, np.ndarray]] = {}  # device -> that large state's own arrays

    def fits(self, size: int) -> bool:
        last = self.slabs[-1] if self.slabs else None
        return last is not None and self.used + size <= len(last)

    def add_slab(self, nbytes: int) -> None:
        self.slabs.append(np.frombuffer(mmap.mmap(-1, nbytes), np.uint8))
        self.live.append(0)
        self.bytes += nbytes
        self.used = 0

    def copy_in(self, device_id: int, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Read-only copies of `values` in the last slab (which `fits` them)."""
        slab, kept = self.slabs[-1], {}
        assert slab is not None
        for key, value in values.items():
            value = np.ascontiguousarray(value)
            at = self.used
            self.used = _padded(at + value.nbytes)
            copy = slab[at : at + value.nbytes].view(value.dtype).reshape(value.shape)
            copy[...] = value
            copy.flags.writeable = False
            kept[key] = copy
        self.devices[device_id] = len(self.slabs) - 1
        self.live[-1] += 1
        return kept

    def release(self, device_id: int) -> int:
        """Forget a device's state; the bytes this gives back (its large state, or a slab it emptied
        that is not the one being filled)."""
        where = self.devices.pop(device_id)
        if where < 0:
            nbytes = self.loose.pop(device_id)
            self.owned.pop(device_id, None)
        else:
            self.live[where] -= 1
            slab = self.slabs[where]
            if self.live[where] or where == len(self.slabs) - 1 or slab is None:
                return 0
            nbytes, self.slabs[where] = len(slab), None
        self.bytes -= nbytes
        return nbytes


def _padded(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class Shelf:
    """A host's access to the run's device state folder: the segments it reads (a few kept open), the
    one it writes this round, and the state it wrote most recently, in memory (at most `cache_bytes`
    of slabs, read-only arrays): devices are dealt to the same host round after round while the
    cohort and their costs stay the same, and their state is then read from memory, not from the
    disk. The oldest segment's states leave the cache first. Thread-safe (the host reads ahead on a
    thread of its own)."""

    def __init__(self, folder: Path | None, host: int, keep_open: int = 128, cache_bytes: int = CACHE_BYTES) -> None:
        self.folder = folder
        self.host = host
        self.keep_open = keep_open
        self.cache_bytes = cache_bytes
        self._readers: OrderedDict[str, SegmentReader] = OrderedDict()
        self._cache: dict[int, tuple[str, dict[str, np.ndarray]]] = {}  # device -> (segment, its state)
        self._segments: OrderedDict[str, _Segment] = OrderedDict()  # in the order they were written
        self._cached = 0  # bytes of every segment's slabs and large states
        self._lock = threading.Lock()

    def read(self, segment: str, device_id: int) -> dict[str, np.ndarray]:
        if self.folder is None:
            raise StateError(f"device {device_id} has state in {segment}, but this host has no state folder")
        with self._lock:
            hit = self._cache.get(device_id)
            if hit is not None and hit[0] == segment:
                return hit[1]
            reader = self._readers.pop(segment, None) or SegmentReader(self.folder / segment)
            self._readers[segment] = reader
            while len(self._readers) > self.keep_open:
                self._readers.popitem(last=False)[1].close()
        return reader.read(device_id)

    def holds(self, segment: str, device_id: int) -> bool:
        """Whether the device's state in `segment` is in memory (read without the disk)."""
        hit = self._cache.get(device_id)
        return hit is not None and hit[0] == segment

    def take(self, segment: str, device_id: int) -> dict[str, np.ndarray] | None:
        """A large state the shelf holds in memory, handed over to be changed in place (top-k's residual,
        updated where it lies, as a phone would: no new 400 KB array and its allocator churn a device):
        the shelf forgets it, so its changed values are never read as the segment's (a device whose
        round then fails reads it from the segment next time). None where it is not held so."""
        with self._lock:
            hit = self._cache.get(device_id)
            held = self._segments.get(hit[0]) if hit is not None and hit[0] == segment else None
            owned = held.owned.get(device_id) if held is not None else None
            if owned is not None:
                self._drop(device_id)
            return owned

    def remember(self, segment: str, device_id: int, values: Mapping[str, np.ndarray]) -> None:
        """Keep what a device just stored in `segment` in memory too (read-only), unless the cache
        cannot make room for it by letting older segments go. A small state is copied into its
        segment's slabs; a large one (top-k's residuals: 400 KB) is kept as it is, an allocation of
        its own that goes back to the system whole."""
        size = sum(_padded(v.nbytes) for v in values.values())
        if size > self.cache_bytes:
            return
        with self._lock:
            self._drop(device_id)  # (what it kept before: replaced)
            held = self._segments.get(segment)
            if size >= LOOSE_BYTES:
                if not self._room(segment, size):
                    return
                kept = {}
                for key, value in values.items():
                    value = value.view()
                    value.flags.writeable = False
                    kept[key] = value
                held = held or self._segments.setdefault(segment, _Segment())
                held.loose[device_id], held.devices[device_id] = size, -1
                held.owned[device_id] = dict(values)
                held.bytes += size
                self._cached += size
            else:
                if held is None or not held.fits(size):
                    slab = max(size, min(SLAB_BYTES, self.cache_bytes // 8))  # (a small budget: small slabs)
                    if not self._room(segment, slab):
                        return
                    held = held or self._segments.setdefault(segment, _Segment())
                    held.add_slab(slab)
                    self._cached += slab
                kept = held.copy_in(device_id, values)
            self._cache[device_id] = (segment, kept)

    def _room(self, segment: str, nbytes: int) -> bool:
        """Whether `nbytes` more fit the budget, once segments older than `segment` are let go."""
        while self._cached + nbytes > self.cache_bytes and self._segments:
            oldest = next(iter(self._segments))
            if oldest == segment:
                break
            self._evict(oldest)
        return self._cached + nbytes <= self.cache_bytes

    def _drop(self, device_id: int) -> None:
        """Forget a device's cached state (a newer one replaces it); a slab goes with the last state in
        it, a segment with its last state."""
        old = self._cache.pop(device_id, None)
        if old is None:
            return
        held = self._segments[old[0]]
        self._cached -= held.release(device_id)
        if not held.devices:
            self._evict(old[0])

    def _evict(self, segment: str) -> None:
        held = self._segments.pop(segment)
        for device_id in held.devices:
            del self._cache[device_id]
        self._cached -= held.bytes

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
            self._segments.clear()
            self._cached = 0


class Lookahead:
    """Reads a host call's devices' state from the shelf on a thread of its own, `depth` devices ahead
    of the one training, so a device's state is in memory when its round reads it. A state the shelf
    holds in memory is read when asked for, on the caller's thread: handing it to the thread and back
    cost more than the read."""

    def __init__(self, pool: ThreadPoolExecutor, shelf: Shelf, wanted: list[tuple[int, str]], depth: int = 3) -> None:
        self.pool, self.shelf, self.wanted, self.depth = pool, shelf, wanted, depth
        self.segment = dict(wanted)
        self.futures: dict[int, Future[dict[str, np.ndarray]]] = {}
        self.next = 0

    def advance(self) -> None:
        """Keep `depth` reads from the disk queued or done beyond the ones already taken."""
        while self.next < len(self.wanted) and len(self.futures) < self.depth:
            device, segment = self.wanted[self.next]
            if not self.shelf.holds(segment, device):
                self.futures[device] = self.pool.submit(self.shelf.read, segment, device)
            self.next += 1

    def result(self, device: int) -> dict[str, np.ndarray]:
        segment, future = self.segment[device], self.futures.pop(device, None)
        if future is None and self.shelf.holds(segment, device):
            got = self.shelf.read(segment, device)
        else:  # (every read from the disk on the thread: segments are opened and closed there alone)
            got = (future or self.pool.submit(self.shelf.read, segment, device)).result()
        self.advance()
        return got

    def take(self, device: int) -> dict[str, np.ndarray]:
        """`result`, handed over to be changed in place where the shelf holds it in memory (Shelf.take);
        read from the disk otherwise (a new copy: the caller's anyway)."""
        got = self.shelf.take(self.segment[device], device) if device not in self.futures else None
        if got is None:
            return self.result(device)
        self.advance()
        return got

    def close(self) -> None:
        for future in self.futures.values():
            future.cancel()
        self.futures.clear()
