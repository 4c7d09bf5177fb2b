"""Per-round scalars for experiment trackers: TensorBoard event files, written without TensorFlow.

`--tensorboard DIR` writes one event file per run under DIR/<run folder name>/ with the round
table's numbers (test accuracy and loss, train loss, devices, seconds, bytes) at step = round, so
`tensorboard --logdir DIR` compares runs side by side. The file is TFRecord framing (length, masked
crc32c, payload, masked crc32c) around TensorBoard's Event protos, written here: TensorBoard's own
writer imports TensorFlow when it is installed, and the coordinator never does.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import crc32c

from fedsim.tfv1 import mask_crc

SCALARS = ("test_accuracy", "test_loss", "train_loss", "device_acc_mean", "devices_accepted", "samples",
           "wall_s", "hosts_s", "evaluate_s", "bytes_up")


def _record(data: bytes) -> bytes:
    """One TFRecord: the payload's length and both checksums, as TensorBoard reads them."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", mask_crc(crc32c.crc32c(header))) + data
            + struct.pack("<I", mask_crc(crc32c.crc32c(data))))


class TensorBoardLog:
    """Appends each round's scalars to an event file; values that are NaN (rounds without
    evaluation) are left out."""

    def __init__(self, logdir: str | os.PathLike[str], run_name: str) -> None:
        from tensorboard.compat.proto import event_pb2  # protos only: no TensorFlow

        self._event_pb2 = event_pb2
        self.path = Path(logdir) / run_name
        self.path.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.file = self.path / f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}"
        self._f = self.file.open("ab")
        self._write(event_pb2.Event(wall_time=now, file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        self._f.write(_record(event.SerializeToString()))
        self._f.flush()

    def record(self, round_row: dict[str, Any]) -> None:
        from tensorboard.compat.proto import summary_pb2

        values = []
        for key in SCALARS:
            value = round_row.get(key)
            if isinstance(value, (int, float)) and not math.isnan(value):
                values.append(summary_pb2.Summary.Value(tag=key, simple_value=float(value)))
        if values:
            self._write(self._event_pb2.Event(wall_time=time.time(), step=int(round_row["round"]),
                                              summary=summary_pb2.Summary(value=values)))

    def close(self) -> None:
        self._f.close()
