"""The run folder's file names and table schemas.

rounds.parquet and devices.parquet are folders of one parquet part per commit (`round-00000001.parquet`,
named by the committing round; a round a commit unless --commit-every says otherwise, when a part holds
the rounds since the previous commit), which pandas reads as one table (`pd.read_parquet(folder /
"devices.parquet")`): a commit writes its own rows only, so its cost does not grow with the rounds before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from fedsim.model.formats import is_program

CONFIG_FILE = "config.json"
ROUNDS_FILE = "rounds.parquet"
DEVICES_FILE = "devices.parquet"
MODEL_FILE = "model.tflite"
PROGRAM_FILE = "model.pte"  # in place of model.tflite when the devices ran ExecuTorch


def model_file(artifact: bytes) -> str:
    """The run folder's name for the artifact: model.pte for an ExecuTorch program (identifier ET.. at
    bytes 4-8), model.tflite otherwise."""
    return PROGRAM_FILE if is_program(artifact) else MODEL_FILE


def model_path(folder: Path) -> Path | None:
    """The run folder's artifact (model.tflite or model.pte), if it has one yet."""
    return next((folder / n for n in (MODEL_FILE, PROGRAM_FILE) if (folder / n).is_file()), None)


CHECKPOINT_FILE = "global.ckpt"
PARTITION_FILE = "partition.parquet"
FLEET_FILE = "fleet.parquet"  # --fleet: every device's profile
ARTIFACT_FILE = "artifact.json"  # the artifact report (fedsim inspect): signatures, ops, sizes, latency
STATE_FILE = "server_state.npz"  # a stateful strategy's state after the last round (np.load)
RESUME_DIR = "resume"  # resume/round-K.ckpt: the checkpoint a resume starts from (removed when complete)
STATE_DIR = "device_state"  # what devices keep across rounds, in segments (fedsim.core.segments)


@dataclass(frozen=True)
class Column:
    """A column of a run's table, declared once: its name, its type, what it holds."""

    name: str
    kind: str  # "int", "float" or "str"
    doc: str

    @property
    def arrow(self) -> pa.DataType:
        return {"int": pa.int64(), "str": pa.string()}.get(self.kind, pa.float64())


ROUNDS = (
    Column(
        "round", "int", "the round (1-based; 0: the initial model, --eval-initial); a server step with --mode async"
    ),
    Column("test_accuracy", "float", "the new global model on the test set (NaN between --eval-every rounds)"),
    Column("test_loss", "float", "its mean cross-entropy on the test set"),
    Column("train_loss", "float", "the accepted devices' mean training loss, weighted by samples"),
    Column("device_acc_mean", "float", "the new model on the selected devices' own test splits: mean"),
    Column("device_acc_p10", "float", "... 10th percentile"),
    Column("device_acc_p90", "float", "... 90th percentile"),
    Column("devices_selected", "int", "devices selected (or started, --mode async)"),
    Column("devices_reported", "int", "devices that sent an update (accepted or rejected)"),
    Column("devices_accepted", "int", "updates aggregated"),
    Column("samples", "int", "training samples of the accepted devices"),
    Column("wall_s", "float", "seconds the round took here"),
    Column("hosts_s", "float", "seconds from handing the devices out until every host answered"),
    Column("aggregate_s", "float", "seconds of the reduce, the server stages and the strategy"),
    Column("evaluate_s", "float", "seconds of the evaluation"),
    Column("elapsed_s", "float", "seconds since the run began"),
    Column("bytes_up", "int", "bytes the devices sent (encoded updates, control variates, protocol)"),
    Column("bytes_down", "int", "bytes the devices received"),
    Column("sim_round_s", "float", "--fleet: the round's simulated seconds"),
    Column("sim_elapsed_s", "float", "--fleet: simulated seconds since the run began"),
    Column("sim_energy_j", "float", "--fleet: joules the round's devices spent"),
)
DEVICES = (
    Column("round", "int", "the round (server step, --mode async) the device's update counted in"),
    Column("device_id", "int", "the device"),
    Column("host", "int", "the host that ran it (-1: none did)"),
    Column("samples", "int", "its training samples"),
    Column("train_loss", "float", "its mean training loss this round"),
    Column("train_s", "float", "seconds in its runtime's restore, train and save calls"),
    Column("checkpoint_bytes", "int", "bytes it sent (its encoded update)"),
    Column(
        "status",
        "str",
        "ok, rejected, failed; with --fleet also straggler, dropped, unavailable; --mode async: stale",
    ),
    Column("reason", "str", "why it was rejected or failed, or what a stage did to its update"),
    Column("test_accuracy", "float", "the new global model on its own test split"),
    Column("role", "str", "honest, or the attack it mounts"),
    Column("sim_compute_s", "float", "--fleet: simulated seconds of its training"),
    Column("sim_comm_s", "float", "--fleet: simulated seconds of its download and upload"),
    Column("sim_finish_s", "float", "--fleet: when it finished in the round"),
    Column("sim_energy_j", "float", "--fleet: joules it spent"),
    Column("aggregated", "float", "1 if the strategy used its accepted update (Krum, Multi-Krum, Bulyan pick)"),
)
ROUND_COLUMNS = [c.name for c in ROUNDS]
DEVICE_COLUMNS = [c.name for c in DEVICES]
ROUND_SCHEMA = pa.schema([(c.name, c.arrow) for c in ROUNDS])
DEVICE_SCHEMA = pa.schema([(c.name, c.arrow) for c in DEVICES])
# Columns a run adds beyond these (a stage's, an instruction's, --mode async's) are declared by the part
# that fills them, by name, and hold numbers.


def column_reference() -> str:
    """The tables' declared columns as markdown (docs/run-folder.md holds this text; a test checks it)."""
    out = []
    for title, columns in (("rounds.parquet", ROUNDS), ("devices.parquet", DEVICES)):
        out += [f"`{title}`:", "", "| column | type | what |", "| --- | --- | --- |"]
        out += [f"| `{c.name}` | {c.kind} | {c.doc} |" for c in columns]
        out.append("")
    return "\n".join(out)


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
