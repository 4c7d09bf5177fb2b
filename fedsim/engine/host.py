"""A device host: the fleet's data (shared), one interpreter it lends to each device it is dealt in
turn, a scratch folder. Any host can run any device; which ones it runs changes every round.

Plain Python; `engine.ray` wraps it in a Ray actor and `engine.local` calls it directly. Interpreters
are per host, not per device: a device's round begins with `restore` of the global checkpoint, which
also zeroes the on-device optimiser's state, so the interpreter carries nothing from one device to
the next. What happens to each upload is the round's pipeline stages (fedsim.pipeline), called in
order; the host knows none of them by name.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.checkpoint import CheckpointError, FlatReader, WeightSpec, flatten, read_checkpoint, scratch_dir
from fedsim.core.devicestate import DeviceState
from fedsim.core.segments import SegmentWriter
from fedsim.core.shelf import Lookahead, Shelf
from fedsim.device import Device, Runner, evaluate_counts, open_runner
from fedsim.engine.base import DeviceReport, PersonalEval, RoundResult, StateWritten
from fedsim.engine.layout import ShardData, TestBlocks
from fedsim.engine.personal import evaluate_personal
from fedsim.engine.settings import HostSettings
from fedsim.pipeline.base import HostRound, Rejected, Upload, UploadContext
from fedsim.strategies.aggregate import accumulator


def global_vector(global_checkpoint: bytes, work: HostRound) -> np.ndarray | None:
    """The global weights as one float64 vector when a stage reads them."""
    if not work.needs_global:
        return None
    return flatten(read_checkpoint(global_checkpoint), work.spec).astype(np.float64)


def accept_upload(
    reader: FlatReader,
    path: os.PathLike[str],
    work: HostRound,
    device_id: int,
    samples: int,
    ctx: UploadContext,
    state: DeviceState | None = None,
    stage_s: dict[str, float] | None = None,
) -> Upload:
    """The checkpoint a device holding `samples` samples saved at `path`, read (every block's checksum)
    and passed through the round's upload stages in order. CheckpointError or Rejected if refused.
    `stage_s`: each stage's seconds are added to it, by name (the round's `<stage>_host_s` columns)."""
    weights, flat, size = reader.read(path)
    coefficient = work.coefficient(device_id, samples)
    up = Upload(device_id, flat, weights, size, coefficient, work.plan(device_id), state=state or DeviceState())
    for stage in work.stages:
        began = time.perf_counter()
        try:
            up = stage.upload(up, ctx)
        finally:
            if stage_s is not None:
                stage_s[stage.name] = stage_s.get(stage.name, 0.0) + time.perf_counter() - began
    return up


class DeviceHost:
    def __init__(
        self,
        host_index: int,
        fleet: ShardData,
        settings: HostSettings,
        test_blocks: TestBlocks | None = None,
        artifact: bytes | None = None,
        runner_factory: Callable[[bytes], Any] = open_runner,
    ) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.host_index = host_index
        self.artifact = artifact
        self.settings = settings
        self.fleet = fleet
        self.test_blocks = [(x, np.asarray(y, dtype=np.int64)) for x, y in test_blocks or []]
        self.scratch = scratch_dir(f"fedsim-host{host_index}-")
        # Every device's `save` overwrites this one file (the path is built once: it is used per device).
        self._device_out = self.scratch / "device.ckpt"
        self._runner: Any = None
        self._runner_factory = runner_factory  # the artifact's interpreter (tests: a stand-in at this boundary)
        self._flat_reader: FlatReader | None = None
        # the run's device state (use_state_folder); until told, a folder of this host's own
        self.relay = False
        self.shelf = Shelf(self.scratch / "state", host_index, cache_bytes=settings.state_cache_bytes)
        self._pool: ThreadPoolExecutor | None = None  # reads devices' state ahead (Lookahead)

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            if self.artifact is None:
                raise RuntimeError(f"host {self.host_index} has no artifact loaded")
            self._runner = self._runner_factory(self.artifact)
        return self._runner

    def ready(self) -> int:
        """Build the interpreter now (the first round then pays no start-up); return the host's pid."""
        _ = self.runner
        return os.getpid()

    def device(self, device_id: int) -> Device | None:
        """The device's data as views into the fleet's arrays (made when it is dealt, not kept)."""
        if not 0 <= device_id < self.fleet.devices:
            return None
        start, stop, test_stop = self.fleet.bounds[device_id].tolist()
        x, y = self.fleet.x, self.fleet.y
        return Device(device_id, x[start:stop], y[start:stop], self.settings.seed, x[stop:test_stop], y[stop:test_stop])

    def initial_checkpoint(self) -> bytes:
        return self.runner.initial_checkpoint(self.scratch)

    def use_state_folder(self, folder: Path) -> bool:
        """Read and write device state in the run's `folder` where this host can reach it; where it
        cannot (a node of a cluster without the run folder), keep what it writes in its scratch
        folder and hand it to the engine, which stores it and hands this host the state of its
        devices with their work (`relay`). Returns whether it relays."""
        self.shelf.close()
        self.relay = not writable(folder)
        cache = self.settings.state_cache_bytes
        self.shelf = Shelf(self.scratch / "state" if self.relay else folder, self.host_index, cache_bytes=cache)
        return self.relay

    def evaluate(
        self, checkpoint: bytes, device_ids: Sequence[int] = ()
    ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[float, float]]]:
        """([top-1, top-3 correct, targets scored], per-sample losses) of `checkpoint` on this host's
        blocks of the test set, and its (accuracy, mean loss) on each of `device_ids`' own test split
        (those that have one)."""
        path = self.scratch / "evaluate.ckpt"
        path.write_bytes(checkpoint)
        unscored = self.fleet.unscored
        try:
            scores, losses = evaluate_counts(self.runner, path, self.test_blocks, unscored=unscored)
            per_device = {}
            for d in device_ids:
                device = self.device(d)
                if (
                    device is not None
                    and device.x_test is not None
                    and device.y_test is not None
                    and len(device.y_test)
                ):
                    test = [(device.x_test, device.y_test)]
                    c, lost = evaluate_counts(self.runner, path, test, restore=False, unscored=unscored)
                    per_device[d] = (c[0] / c[2] if c[2] else float("nan"), float(lost.mean()))
            return scores, losses, per_device
        finally:
            path.unlink(missing_ok=True)

    def evaluate_personal(self, checkpoint: bytes, personal: PersonalEval) -> dict[int, tuple[float, float]]:
        """(global accuracy, personal accuracy) of the evaluation's devices with a test split of their
        own (fedsim.engine.personal)."""
        return evaluate_personal(self, checkpoint, personal)

    def run_round(
        self, round_num: int, global_checkpoint: bytes | Path, device_ids: Sequence[int], work: HostRound
    ) -> RoundResult:
        """Run the devices one after another; pass each upload through the round's stages and
        accumulate it here, so one partial per host crosses the network instead of one checkpoint per
        device. `global_checkpoint`: its bytes, or a file the coordinator wrote (fedsim.engine.exchange)."""
        if isinstance(global_checkpoint, Path):  # restored from where the coordinator wrote it
            path, wrote = global_checkpoint, False
            global_checkpoint = path.read_bytes() if work.needs_global else b""
        else:
            path, wrote = self.scratch / f"global-{round_num}.ckpt", True
            path.write_bytes(global_checkpoint)
        acc = accumulator(work.accumulate, work.modulus, len(device_ids))
        reports = []
        global_flat = global_vector(global_checkpoint, work)
        global32 = global_flat.astype(np.float32) if global_flat is not None else None
        ctx = UploadContext(round_num, work.spec, global_flat, work.seed, global32)
        kept = self.shelf.writer(round_num)  # what this call's devices keep, in one new segment
        ahead = self._reads_ahead(device_ids, work)
        stage_s: dict[str, float] = {}
        try:
            for device_id in device_ids:
                ahead.advance()
                report, up, start_loss = self._run_device(device_id, path, work, ctx, kept, ahead, stage_s)
                if up is not None:
                    vector = up.payload if up.payload is not None else up.flat
                    assert vector is not None
                    steps = up.plan.steps if up.plan.steps is not None else -1
                    acc.add(vector, up.coefficient, device_id, report.samples, start_loss, steps, up.counts)
                reports.append(report)
        finally:
            ahead.close()
            if wrote:
                path.unlink(missing_ok=True)
            self._device_out.unlink(missing_ok=True)
            written = kept.close()
        states = [self._written(kept, written)] if written else []
        return RoundResult(reports, [acc.partial()] if acc.count else [], states, stage_s)

    def _written(self, kept: SegmentWriter, device_ids: list[int]) -> StateWritten:
        """The segment this call wrote; from a relay host with its bytes (its own copy removed)."""
        if not self.relay:
            return StateWritten(kept.path.name, tuple(device_ids))
        data = np.fromfile(kept.path, np.uint8)
        kept.path.unlink()
        return StateWritten(kept.path.name, tuple(device_ids), data)

    def _reads_ahead(self, device_ids: Sequence[int], work: HostRound) -> Lookahead:
        """The call's devices' state, read a few devices ahead of the one training."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"fedsim-state-{self.host_index}")
        wanted = [(d, work.state_at[d]) for d in device_ids if d in work.state_at and d not in work.carried]
        return Lookahead(self._pool, self.shelf, wanted)

    def _state(self, device_id: int, work: HostRound, ahead: Lookahead) -> DeviceState:
        """The device's state handle: what it kept (read when first asked for), what it keeps now."""
        if device_id in work.carried:  # (a relay host is handed it)
            carried = work.carried[device_id]
            return DeviceState(lambda: carried)
        if device_id not in work.state_at:
            return DeviceState()
        return DeviceState(lambda: ahead.result(device_id), lambda: ahead.take(device_id))

    def _run_device(
        self,
        device_id: int,
        global_path: Path,
        work: HostRound,
        ctx: UploadContext,
        kept: SegmentWriter,
        ahead: Lookahead,
        stage_s: dict[str, float] | None = None,
    ) -> tuple[DeviceReport, Upload | None, float]:
        """(report, the accepted upload or None, the first batch's loss). What the device keeps for
        its next round goes into `kept` once it has finished its round (the server accepting its
        upload or not: a phone does not know)."""
        device = self.device(device_id)
        if device is None:
            error = f"device {device_id} is not in the fleet of {self.fleet.devices} devices"
            return DeviceReport(device_id, self.host_index, 0, "failed", error=error), None, float("nan")
        out = self._device_out
        plan = work.plan(device_id)
        state = self._state(device_id, work, ahead)
        try:
            trained = device.run_round(
                self.runner,
                global_path,
                ctx.round_num,
                self.settings.local_epochs,
                self.settings.batch_size,
                out,
                tuple(plan.instructions.values()),
                plan.steps,
                state,
                work.spec,
            )
        except Exception as e:  # a device's failure is data for the coordinator, not a crash of the host
            self._runner = None  # the interpreter may be in a bad state: the next device gets a fresh one
            error = f"{type(e).__name__}: {e}"
            return DeviceReport(device_id, self.host_index, device.samples, "failed", error=error), None, float("nan")

        def report(status: str, error: str, nbytes: int, up: Upload | None = None) -> DeviceReport:
            return DeviceReport(
                device_id,
                self.host_index,
                trained.samples,
                status,
                trained.train_loss,
                trained.train_s,
                nbytes,
                error,
                up.metrics if up is not None else {},
            )

        try:
            up = accept_upload(self._reader(work.spec), out, work, device_id, trained.samples, ctx, state, stage_s)
        except (CheckpointError, Rejected) as e:
            answer: tuple[DeviceReport, Upload | None, float] = (
                report("rejected", str(e), out.stat().st_size if out.exists() else 0),
                None,
                float("nan"),
            )
        else:
            answer = report("ok", up.note, up.nbytes, up), up, trained.start_loss
        if state.changed:
            merged = state.merged()
            kept.add(device_id, merged)
            if not self.relay:  # (a relay host's segments are handed to the engine: read back from it)
                self.shelf.remember(kept.path.name, device_id, merged)
        return answer

    def _reader(self, spec: WeightSpec) -> FlatReader:
        if self._flat_reader is None or (self._flat_reader.spec is not spec and self._flat_reader.spec != spec):
            self._flat_reader = FlatReader(spec)
        return self._flat_reader

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self.shelf.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def writable(folder: Path) -> bool:
    """Whether this process can create files in `folder` (made if missing): a host on another node of
    a Ray cluster may not reach the run folder."""
    probe = folder / f".probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return os.environ.get("FEDSIM_STATE_RELAY", "") not in ("1", "true")
