"""Device state on disk: segment files (fedsim.core.segments) and the run's index of them
(fedsim.loop.devicestate)."""

import numpy as np
import pytest

from fedsim.core.devicestate import DeviceState
from fedsim.core.segments import ALIGN, SegmentReader, SegmentWriter, StateError, segment_name
from fedsim.core.shelf import Shelf
from fedsim.engine.base import StateWritten
from fedsim.loop.devicestate import StateIndex


def states(n: int, seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        d: {"residual": rng.standard_normal(1000 + 7 * d).astype(np.float32), "steps": np.array([d, 2 * d], np.int64)}
        for d in range(n)
    }


@pytest.mark.parametrize("batch", [None, 3 * ALIGN])
@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_a_segment_gives_back_every_device_s_arrays_exactly(tmp_path, where, batch, monkeypatch):
    """Written on the disk (direct I/O) or on tmpfs (no direct I/O: the plain path), read back exactly,
    each array on a block boundary; the writer's thread is handed the devices all at close (the default
    batch holds them all) or a few at a time (a batch of 3 blocks: 20 hand-offs, queued and written
    together while they wait)."""
    import tempfile

    if batch is not None:
        monkeypatch.setattr(SegmentWriter, "BATCH", batch)
    folder = tmp_path if where == "disk" else tempfile.mkdtemp(dir="/dev/shm")
    want = states(20)
    writer = SegmentWriter(__import__("pathlib").Path(folder) / segment_name(3, 1))
    for d, values in want.items():
        writer.add(d, values)
    assert writer.close() == list(range(20))
    reader = SegmentReader(writer.path)
    try:
        for d, values in want.items():
            got = reader.read(d)
            assert set(got) == set(values)
            for key in values:
                np.testing.assert_array_equal(got[key], values[key])
                assert got[key].dtype == values[key].dtype
            assert all(offset % ALIGN == 0 for _, _, offset in reader.offsets(d).values())
        with pytest.raises(StateError, match="holds no state of device 99"):
            reader.read(99)
    finally:
        reader.close()
    assert writer.path.stat().st_size % ALIGN == 0


def test_a_damaged_or_truncated_segment_is_a_clear_error(tmp_path):
    writer = SegmentWriter(tmp_path / "a.seg")
    writer.add(0, {"x": np.arange(5000, dtype=np.float32)})
    writer.close()
    data = writer.path.read_bytes()
    (tmp_path / "cut.seg").write_bytes(data[:-5])
    with pytest.raises(StateError, match="truncated or not a segment"):
        SegmentReader(tmp_path / "cut.seg")
    (tmp_path / "junk.seg").write_bytes(b"not a segment at all")
    with pytest.raises(StateError, match="truncated or not a segment"):
        SegmentReader(tmp_path / "junk.seg")
    with pytest.raises(StateError, match="cannot be opened"):
        SegmentReader(tmp_path / "missing.seg")
    assert SegmentWriter(tmp_path / "none.seg").close() == [] and not (tmp_path / "none.seg").exists()


def test_the_shelf_serves_what_a_host_just_wrote_from_memory_read_only(tmp_path):
    shelf = Shelf(tmp_path, host=0, cache_bytes=10_000)
    writer = shelf.writer(1)
    small = {"r": np.arange(100, dtype=np.float32)}
    writer.add(7, small)
    writer.close()
    shelf.remember(writer.path.name, 7, small)
    got = shelf.read(writer.path.name, 7)
    np.testing.assert_array_equal(got["r"], small["r"])
    with pytest.raises(ValueError):
        got["r"][0] = 1.0  # what the cache holds cannot be changed in place
    big = {"r": np.zeros(5000, np.float32)}  # larger than the cache: read from the disk
    shelf.remember(writer.path.name, 8, big)
    assert 8 not in shelf._cache
    shelf.close()


def test_lookahead_reads_from_the_disk_on_its_thread_and_from_memory_on_the_caller_s(tmp_path):
    """The states the shelf holds in memory are not handed to the thread; the others are read there,
    ahead of the device asking; every device gets its own state, asked in order or not."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from fedsim.core.shelf import Lookahead

    want = states(8)
    shelf = Shelf(tmp_path, host=0)
    writer = shelf.writer(1)
    for d, values in want.items():
        writer.add(d, values)
    writer.close()
    for d in (0, 2, 4, 6):  # in memory; 1, 3, 5, 7 only on the disk
        shelf.remember(writer.path.name, d, want[d])
    threads: dict[int, str] = {}
    read = shelf.read

    def reading(segment: str, device: int) -> dict:
        threads[device] = threading.current_thread().name
        return read(segment, device)

    shelf.read = reading  # type: ignore[method-assign]
    with ThreadPoolExecutor(1, thread_name_prefix="ahead") as pool:
        ahead = Lookahead(pool, shelf, [(d, writer.path.name) for d in want], depth=2)
        ahead.advance()
        for d in [0, 1, 2, 5, 4, 3, 6, 7]:  # (5 before 3 and 4: out of order)
            got = ahead.result(d)
            for key in want[d]:
                np.testing.assert_array_equal(got[key], want[d][key])
        ahead.close()
    assert {d for d, name in threads.items() if name.startswith("ahead")} == {1, 3, 5, 7}
    assert {d for d, name in threads.items() if not name.startswith("ahead")} == {0, 2, 4, 6}
    shelf.close()


def test_a_large_state_is_handed_over_to_be_changed_in_place_and_then_read_from_its_segment(tmp_path):
    """Shelf.take gives a large cached state's own (writable) arrays and forgets it, so its changed
    values are never read as the segment's; a small state (copied into a slab), another segment's or
    one not in memory is not handed over. DeviceState.own takes it where the host can hand it over."""
    from concurrent.futures import ThreadPoolExecutor

    from fedsim.core.shelf import Lookahead

    shelf = Shelf(tmp_path, host=0)
    writer = shelf.writer(1)
    large = {"residual": np.arange(30_000, dtype=np.float32)}  # 120 KB: kept as it is
    small = {"head": np.arange(10, dtype=np.float32)}
    writer.add(1, large)
    writer.add(2, small)
    writer.close()
    segment = writer.path.name
    shelf.remember(segment, 1, large)
    shelf.remember(segment, 2, small)
    assert not shelf.read(segment, 1)["residual"].flags.writeable  # (reads stay read-only)
    assert shelf.take("another.seg", 1) is None and shelf.take(segment, 2) is None
    with ThreadPoolExecutor(1) as pool:
        ahead = Lookahead(pool, shelf, [(1, segment), (2, segment)])
        state = DeviceState(lambda: ahead.result(1), lambda: ahead.take(1))
        owned = state.own("residual")
        assert owned is large["residual"] and owned.flags.writeable
        owned += 1.0  # the device's round changes it where it lies
        assert not shelf.holds(segment, 1) and shelf.take(segment, 1) is None
        np.testing.assert_array_equal(shelf.read(segment, 1)["residual"], np.arange(30_000, dtype=np.float32))
        # a state the shelf does not hold in memory: read from the disk, a copy of the caller's own
        again = Lookahead(pool, shelf, [(1, segment)])
        from_disk = DeviceState(lambda: again.result(1), lambda: again.take(1)).own("residual")
        np.testing.assert_array_equal(from_disk, np.arange(30_000, dtype=np.float32))
        assert from_disk is not large["residual"]
        # a small state: as `get` gives it (read-only: the caller makes a new array)
        head = DeviceState(lambda: ahead.result(2), lambda: ahead.take(2)).own("head")
        assert not head.flags.writeable and shelf.holds(segment, 2)
    shelf.close()


def test_the_shelf_cache_lets_a_segment_go_whole_when_its_states_are_replaced_or_it_is_oldest(tmp_path):
    """States are copied into slabs per segment: a segment whose devices all wrote newer state, or the
    oldest segment when the budget is reached, gives its slabs back; what it held is then read from
    the disk, the same values."""
    states = {r: {d: {"p": np.full(1000, 10 * r + d, np.float32)} for d in range(8)} for r in (1, 2, 3)}
    shelf = Shelf(tmp_path, host=0, cache_bytes=3 * 8 * 4032)
    names = {}
    for r in (1, 2):
        writer = shelf.writer(r)
        for d in range(8) if r == 1 else range(4):  # round 2 rewrites devices 0-3 only
            writer.add(d, states[r][d])
        writer.close()
        names[r] = writer.path.name
        for d in range(8) if r == 1 else range(4):
            shelf.remember(names[r], d, states[r][d])
    assert set(shelf._segments) == {names[1], names[2]}  # round 1's still holds devices 4-7
    assert shelf._segments[names[1]].slabs[0] is None  # (its first slab, devices 0-2, given back)
    assert shelf._cached == sum(s.bytes for s in shelf._segments.values()) == (2 + 2) * 12096  # slabs of 3 states
    for d in range(4):
        np.testing.assert_array_equal(shelf.read(names[2], d)["p"], states[2][d]["p"])
    for d in range(4, 8):
        np.testing.assert_array_equal(shelf.read(names[1], d)["p"], states[1][d]["p"])
    writer = shelf.writer(3)
    for d in range(4, 8):
        writer.add(d, states[3][d])
    writer.close()
    names[3] = writer.path.name
    for d in range(4, 8):
        shelf.remember(names[3], d, states[3][d])
    assert names[1] not in shelf._segments  # every device it held has newer state: its slabs are gone
    assert shelf._cached == sum(s.bytes for s in shelf._segments.values()) <= shelf.cache_bytes
    # a budget for one segment's slab: the oldest segment goes to make room, its devices read from the disk
    small = Shelf(tmp_path, host=0, cache_bytes=4 * 4032)
    for d in range(4):
        small.remember(names[2], d, states[2][d])
    small.remember(names[3], 4, states[3][4])
    assert list(small._segments) == [names[3]] and set(small._cache) == {4}
    np.testing.assert_array_equal(small.read(names[2], 1)["p"], states[2][1]["p"])  # from the disk
    shelf.close()
    small.close()
    # a large state (top-k's residuals) is kept as it is, not copied, and counted until replaced
    large = Shelf(tmp_path, host=0, cache_bytes=10 * 2**20)
    residual = {"r": np.ones(100_000, np.float32)}
    large.remember(names[2], 0, residual)
    assert np.shares_memory(large.read(names[2], 0)["r"], residual["r"]) and large._cached == 400_000
    large.remember(names[3], 0, {"r": np.zeros(100_000, np.float32)})
    assert list(large._segments) == [names[3]] and large._cached == 400_000
    large.close()


def test_a_device_state_reads_what_it_kept_once_and_keeps_what_it_puts():
    calls = []
    state = DeviceState(lambda: calls.append(1) or {"a": np.ones(2)})
    assert state.get("missing") is None and calls == [1]
    state.put("b", np.zeros(1))
    assert set(state.merged()) == {"a", "b"} and calls == [1] and set(state.changed) == {"b"}


def test_the_index_commits_what_devices_keep_and_drops_segments_no_commit_can_need(tmp_path):
    """Round 1: devices 0-3 keep state in S1. Round 2: devices 0, 1 in S2 (2, 3 still in S1). Round 3:
    every device in S3. S1 and S2 go only once neither this commit nor the one before names them; a
    segment of an attempt that did not count (never absorbed) goes at the next commit."""
    index = StateIndex(tmp_path, devices=5)

    def round_of(name, devices, absorb=True):
        (tmp_path / name).write_bytes(b"x")
        index.written([StateWritten(name, tuple(devices))])
        if absorb:
            index.absorb(devices)
        index.forget_pending()

    round_of("S1.seg", [0, 1, 2, 3])
    saved, files = index.commit()
    assert files.sync == ("S1.seg",) and files.drop == ()
    assert index.locate([0, 3, 4]) == {0: "S1.seg", 3: "S1.seg"}
    round_of("S2.seg", [0, 1])
    round_of("retry.seg", [2], absorb=False)  # an attempt whose round was retried
    saved, files = index.commit()
    assert files.sync == ("S2.seg",) and files.drop == ("retry.seg",)
    assert index.locate(range(5)) == {0: "S2.seg", 1: "S2.seg", 2: "S1.seg", 3: "S1.seg"}
    round_of("S3.seg", [0, 1, 2, 3])
    saved, files = index.commit()
    assert files.drop == ()  # S1 and S2: named by the commit before, which a resume may cut back to
    saved, files = index.commit()
    assert set(files.drop) == {"S1.seg", "S2.seg"}
    assert saved["device_state.ids"].tolist() == [0, 1, 2, 3]
    assert [str(n) for n in saved["device_state.segments"]] == ["S3.seg"]
    # a resume reads the same index back; a segment it names that is gone is a clear error
    again = StateIndex(tmp_path, devices=5)
    again.restore(saved)
    assert again.locate(range(5)) == index.locate(range(5))
    (tmp_path / "S3.seg").unlink()
    with pytest.raises(StateError, match="not in"):
        StateIndex(tmp_path, devices=5).restore(saved)


def test_an_index_without_state_saves_nothing(tmp_path):
    saved, files = StateIndex(tmp_path, devices=3).commit(final=True)
    assert saved == {} and files.sync == () and files.drop == ()
