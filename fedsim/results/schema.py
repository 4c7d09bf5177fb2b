"""The run folder's file names and table schemas.

rounds.parquet and devices.parquet are folders of one parquet part per round (`round-00000001.parquet`),
which pandas reads as one table (`pd.read_parquet(folder / "devices.parquet")`): recording a round
writes that round's rows only, so its cost does not grow with the rounds before it.
"""

from __future__ import annotations

import pyarrow as pa

CONFIG_FILE = "config.json"
ROUNDS_FILE = "rounds.parquet"
DEVICES_FILE = "devices.parquet"
MODEL_FILE = "model.tflite"
CHECKPOINT_FILE = "global.ckpt"
PARTITION_FILE = "partition.parquet"
FLEET_FILE = "fleet.parquet"  # --fleet: every device's profile
ARTIFACT_FILE = "artifact.json"  # the artifact report (fedsim inspect): signatures, ops, sizes, latency
STATE_FILE = "server_state.npz"  # a stateful strategy's state after the last round (np.load)
RESUME_DIR = "resume"  # resume/round-K.ckpt: the checkpoint a resume starts from (removed when complete)
STATE_DIR = "device_state"  # what devices keep across rounds, in segments (fedsim.core.segments)

ROUND_COLUMNS = [
    "round",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "device_acc_mean",
    "device_acc_p10",
    "device_acc_p90",
    "devices_selected",
    "devices_reported",
    "devices_accepted",
    "samples",
    "wall_s",
    "hosts_s",
    "aggregate_s",
    "evaluate_s",
    "elapsed_s",
    "bytes_up",
    "bytes_down",
    "sim_round_s",
    "sim_elapsed_s",
    "sim_energy_j",
]
DEVICE_COLUMNS = [
    "round",
    "device_id",
    "host",
    "samples",
    "train_loss",
    "train_s",
    "checkpoint_bytes",
    "status",
    "reason",
    "test_accuracy",
    "role",
    "sim_compute_s",
    "sim_comm_s",
    "sim_finish_s",
    "sim_energy_j",
    "aggregated",
]
_INT_COLUMNS = {
    "round",
    "device_id",
    "host",
    "samples",
    "checkpoint_bytes",
    "devices_selected",
    "devices_reported",
    "devices_accepted",
    "bytes_up",
    "bytes_down",
}
_STRING_COLUMNS = {"status", "reason", "role"}


def _schema(columns: list[str]) -> pa.Schema:
    """One fixed schema per table, so every round's part has the same types (a round whose reasons
    are all empty must not make the column null-typed)."""

    def kind(c: str) -> pa.DataType:
        return pa.int64() if c in _INT_COLUMNS else pa.string() if c in _STRING_COLUMNS else pa.float64()

    return pa.schema([(c, kind(c)) for c in columns])


ROUND_SCHEMA = _schema(ROUND_COLUMNS)
DEVICE_SCHEMA = _schema(DEVICE_COLUMNS)


def part_name(round_num: int) -> str:
    return f"round-{round_num:08d}.parquet"


def part_round(name: str) -> int | None:
    """The round a part file holds, or None for anything else in the table's folder."""
    if name.startswith("round-") and name.endswith(".parquet"):
        digits = name[len("round-") : -len(".parquet")]
        return int(digits) if digits.isdigit() else None
    return None


class RunFolderError(FileExistsError):
    """A run folder that cannot be used as asked (taken, damaged, not a run): the message says why."""
