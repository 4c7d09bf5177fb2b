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

from fedsim.checkpoint import CheckpointError, FlatReader, WeightSpec, read_checkpoint, scratch_dir
from fedsim.device import Device, Runner, evaluate_counts
from fedsim.engine.base import DeviceReport, FleetData, HostReduce, HostSettings, RoundResult, TestBlocks
from fedsim.strategies.aggregate import PartialSum
from fedsim.strategies.base import Weights


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
        self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int], reduce: HostReduce | None = None
    ) -> RoundResult:
        """Run the devices one after another. With `reduce`, validate each checkpoint here and add the
        good ones to this host's partial; otherwise return each checkpoint's bytes."""
        path = self.scratch / f"global-{round_num}.ckpt"
        path.write_bytes(global_checkpoint)
        acc = PartialSum()
        reports = []
        # The global weights, only when updates are screened by their distance from them.
        global_weights = read_checkpoint(global_checkpoint) if reduce is not None and reduce.screen.needs_global else None
        try:
            for device_id in device_ids:
                report, weights, flat = self._run_device(device_id, round_num, path, reduce, global_weights)
                if weights is not None and reduce is not None:
                    c = reduce.strategy.coefficient(report.samples)
                    acc.add(weights, c, flat)
                reports.append(report)
        finally:
            path.unlink(missing_ok=True)
            self._device_out.unlink(missing_ok=True)
        partials = [acc.partial()] if reduce is not None and acc.count else []
        return RoundResult(reports, partials)

    def _run_device(
        self,
        device_id: int,
        round_num: int,
        global_path: os.PathLike[str],
        reduce: HostReduce | None,
        global_weights: dict[str, np.ndarray] | None,
    ) -> tuple[DeviceReport, Weights | None, np.ndarray | None]:
        """(report, weights to add to the partial, the same as one vector if the reader has it)."""
        device = self.device(device_id)
        if device is None:
            error = f"device {device_id} is not in the fleet of {self.fleet.devices} devices"
            return DeviceReport(device_id, self.host_index, 0, "failed", error=error), None, None
        out = self._device_out
        try:
            update = device.run_round(
                self.runner, global_path, round_num, self.settings.local_epochs, self.settings.batch_size, out
            )
        except Exception as e:  # a device's failure is data for the coordinator, not a crash of the host
            self._runner = None  # the interpreter may be in a bad state: the next device gets a fresh one
            error = f"{type(e).__name__}: {e}"
            return DeviceReport(device_id, self.host_index, device.samples, "failed", error=error), None, None
        ok = dict(device_id=device_id, host=self.host_index, samples=update.samples,
                  train_loss=update.train_loss, train_s=update.train_s)
        if reduce is None:
            data = out.read_bytes()
            return DeviceReport(status="ok", checkpoint=data, checkpoint_bytes=len(data), **ok), None, None
        try:
            weights, flat, size = self._reader(reduce.screen.spec).read(out)
            screened, note = reduce.screen.screen(weights, global_weights, flat)
        except CheckpointError as e:
            size = out.stat().st_size if out.exists() else 0
            return DeviceReport(status="rejected", error=str(e), checkpoint_bytes=size, **ok), None, None
        # Clipping returns new arrays: the reader's vector then no longer holds what is added.
        return DeviceReport(status="ok", error=note, checkpoint_bytes=size, **ok), screened, flat if screened is weights else None

    def _reader(self, spec: WeightSpec) -> FlatReader:
        if self._flat_reader is None or (self._flat_reader.spec is not spec and self._flat_reader.spec != spec):
            self._flat_reader = FlatReader(spec)
        return self._flat_reader

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
