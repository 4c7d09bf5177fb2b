"""A device host: the devices placed on it, one interpreter it lends to each in turn, a scratch folder.

Plain Python; `engine.ray` wraps it in a Ray actor and `engine.local` calls it directly. Interpreters
are per host, not per device: a device's round begins with `restore` of the global checkpoint, so the
interpreter carries nothing from one device to the next (plain SGD keeps no optimizer state).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import numpy as np

from fedsim.checkpoint import scratch_dir
from fedsim.device import Device, Runner
from fedsim.engine.base import DeviceReport, HostSettings


class DeviceHost:
    def __init__(
        self,
        host_index: int,
        artifact: bytes,
        x_train: np.ndarray,
        y_train: np.ndarray,
        placements: Sequence[tuple[int, np.ndarray]],
        settings: HostSettings,
    ) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        self.host_index = host_index
        self.artifact = artifact
        self.settings = settings
        # Copy each shard out of the shared arrays: the host then owns just its devices' data.
        self.devices = {
            device_id: Device(device_id, x_train[idx].copy(), y_train[idx].copy(), settings.seed)
            for device_id, idx in placements
        }
        self.scratch = scratch_dir(f"fedsim-host{host_index}-")
        self._runner: Runner | None = None

    @property
    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = Runner(self.artifact)
        return self._runner

    def ready(self) -> int:
        """Build the interpreter now (so the first round pays no start-up) and return the host's pid."""
        _ = self.runner
        return os.getpid()

    def device_ids(self) -> list[int]:
        return sorted(self.devices)

    def run_round(self, round_num: int, global_checkpoint: bytes, device_ids: Sequence[int]) -> list[DeviceReport]:
        path = self.scratch / f"global-{round_num}.ckpt"
        path.write_bytes(global_checkpoint)
        reports = []
        try:
            for device_id in device_ids:
                reports.append(self._run_device(device_id, round_num, path))
        finally:
            path.unlink(missing_ok=True)
        return reports

    def _run_device(self, device_id: int, round_num: int, global_path: os.PathLike[str]) -> DeviceReport:
        device = self.devices.get(device_id)
        if device is None:
            return DeviceReport(device_id, self.host_index, 0, "failed", error=f"device {device_id} is not on host {self.host_index}")
        try:
            update = device.run_round(
                self.runner, global_path, round_num, self.settings.local_epochs, self.settings.batch_size, self.scratch
            )
        except Exception as e:  # a device's failure is data for the coordinator, not a crash of the host
            self._runner = None  # the interpreter may be in a bad state: the next device gets a fresh one
            return DeviceReport(device_id, self.host_index, device.samples, "failed", error=f"{type(e).__name__}: {e}")
        return DeviceReport(
            device_id, self.host_index, update.samples, "ok", update.train_loss, update.train_s, update.checkpoint
        )

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
