"""A device host: the fleet's data (shared), one interpreter it lends to each device it is dealt in
turn, a scratch folder. Any host can run any device; which ones it runs changes every round.

Plain Python; `engine.ray` wraps it in a Ray actor and `engine.local` calls it directly. Interpreters
are per host, not per device: a device's round begins with `restore` of the global checkpoint, which
also zeroes the on-device optimiser's state, so the interpreter carries nothing from one device to
the next.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import numpy as np

from fedsim.checkpoint import (
    CheckpointError,
    FlatReader,
    WeightSpec,
    check_weights,
    flatten,
    read_checkpoint,
    scratch_dir,
)
from fedsim.device import Device, Runner, evaluate_counts, write_control
from fedsim.engine.base import DeviceReport, FleetData, HostPipeline, HostSettings, RoundResult, TestBlocks
from fedsim.strategies.aggregate import accumulator
from fedsim.strategies.base import HONEST


def accept_upload(
    reader: FlatReader,
    path: os.PathLike[str],
    pipeline: HostPipeline,
    device_id: int,
    round_num: int,
    global_flat: np.ndarray | None,
) -> tuple[np.ndarray, str, int]:
    """(the upload as one vector to accumulate, a note, the file's size) of the checkpoint a device
    saved at `path`: read, checked against the model, rewritten if the device attacks, screened.
    CheckpointError if it is refused."""
    spec = pipeline.screen.spec
    weights, flat, size = reader.read(path)
    check_weights(weights, spec, flat)
    if flat is None:  # the reader's first file (or an odd one): parsed, not yet a vector
        flat = flatten(weights, spec)
    attack = pipeline.attack
    if attack is not None and attack.on_host and pipeline.role(device_id) != HONEST:
        assert global_flat is not None
        flat = attack.corrupt(flat, global_flat, device_id, round_num)
    flat, note = pipeline.screen.screen(flat, global_flat)
    return flat, note, size


def global_vector(global_checkpoint: bytes, pipeline: HostPipeline) -> np.ndarray | None:
    """The global weights as one float64 vector when the pipeline compares or attacks with them."""
    if not pipeline.needs_global:
        return None
    return flatten(read_checkpoint(global_checkpoint), pipeline.screen.spec).astype(np.float64)


class DeviceHost:
    def __init__(
        self,
        host_index: int,
        fleet: FleetData,
        settings: HostSettings,
        test_blocks: TestBlocks | None = None,
        artifact: bytes | None = None,
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
        self._runner: Runner | None = None
        self._flat_reader: FlatReader | None = None

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            if self.artifact is None:
                raise RuntimeError(f"host {self.host_index} has no .tflite loaded")
            self._runner = Runner(self.artifact)
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

    def evaluate(self, checkpoint: bytes, device_ids: Sequence[int] = ()) -> tuple[int, np.ndarray, dict[int, float]]:
        """(correct, per-sample losses) of `checkpoint` on this host's blocks of the test set, and its
        accuracy on each of `device_ids`' own test split (those that have one)."""
        path = self.scratch / "evaluate.ckpt"
        path.write_bytes(checkpoint)
        try:
            correct, losses = evaluate_counts(self.runner, path, self.test_blocks)
            per_device = {}
            for d in device_ids:
                device = self.device(d)
                if device is not None and device.y_test is not None and len(device.y_test):
                    c, _ = evaluate_counts(self.runner, path, [(device.x_test, device.y_test)], restore=False)
                    per_device[d] = c / len(device.y_test)
            return correct, losses, per_device
        finally:
            path.unlink(missing_ok=True)

    def run_round(
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], pipeline: HostPipeline
    ) -> RoundResult:
        """Run the devices one after another; check, screen and accumulate each upload here
        (HostPipeline), so one partial per host crosses the network instead of one checkpoint per device."""
        path = self.scratch / f"global-{round_num}.ckpt"
        path.write_bytes(global_checkpoint)
        acc = accumulator(pipeline.accumulate)
        reports = []
        # The global weights as one vector, only when uploads are compared with (or attacked from) them.
        global_flat = global_vector(global_checkpoint, pipeline)
        try:
            for device_id in device_ids:
                report, flat, start_loss = self._run_device(device_id, round_num, path, pipeline, global_flat)
                if flat is not None:
                    acc.add(flat, pipeline.strategy.weight(report.samples), device_id, report.samples, start_loss)
                reports.append(report)
        finally:
            path.unlink(missing_ok=True)
            self._device_out.unlink(missing_ok=True)
            (self.scratch / "control.ckpt").unlink(missing_ok=True)
        return RoundResult(reports, [acc.partial()] if acc.count else [])

    def _run_device(
        self,
        device_id: int,
        round_num: int,
        global_path: os.PathLike[str],
        pipeline: HostPipeline,
        global_flat: np.ndarray | None,
    ) -> tuple[DeviceReport, np.ndarray | None, float]:
        """(report, the upload to accumulate as one vector or None, the first batch's loss)."""
        device = self.device(device_id)
        if device is None:
            error = f"device {device_id} is not in the fleet of {self.fleet.devices} devices"
            return DeviceReport(device_id, self.host_index, 0, "failed", error=error), None, float("nan")
        out = self._device_out
        plan = pipeline.plan.get(device_id)
        try:
            control = None
            if plan is not None and plan.control is not None:  # SCAFFOLD's c - c_i, as the device's file
                control = self.scratch / "control.ckpt"
                write_control(np.frombuffer(plan.control, np.float32), control)
            update = device.run_round(
                self.runner,
                global_path,
                round_num,
                self.settings.local_epochs,
                self.settings.batch_size,
                out,
                mu=plan.mu if plan is not None else 0.0,
                flip_labels=pipeline.num_classes if pipeline.role(device_id) == "labelflip" else 0,
                control=control,
                steps=plan.steps if plan is not None else None,
            )
        except Exception as e:  # a device's failure is data for the coordinator, not a crash of the host
            self._runner = None  # the interpreter may be in a bad state: the next device gets a fresh one
            error = f"{type(e).__name__}: {e}"
            return DeviceReport(device_id, self.host_index, device.samples, "failed", error=error), None, float("nan")
        ok = dict(
            device_id=device_id,
            host=self.host_index,
            samples=update.samples,
            train_loss=update.train_loss,
            train_s=update.train_s,
        )
        try:
            flat, note, size = accept_upload(
                self._reader(pipeline.screen.spec), out, pipeline, device_id, round_num, global_flat
            )
        except CheckpointError as e:
            size = out.stat().st_size if out.exists() else 0
            return DeviceReport(status="rejected", error=str(e), checkpoint_bytes=size, **ok), None, float("nan")
        return DeviceReport(status="ok", error=note, checkpoint_bytes=size, **ok), flat, update.start_loss

    def _reader(self, spec: WeightSpec) -> FlatReader:
        if self._flat_reader is None or (self._flat_reader.spec is not spec and self._flat_reader.spec != spec):
            self._flat_reader = FlatReader(spec)
        return self._flat_reader

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
