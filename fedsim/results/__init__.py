"""The run folder: config.json, rounds.parquet, devices.parquet, partition.parquet, model.tflite,
artifact.json, global.ckpt, server_state.npz. `schema` names them and their columns, `writer` writes
them, `reader` reads them back into pandas, `migrate` reads folders of earlier versions."""

from fedsim.results.folder import claim_run_folder, created_folders, default_out
from fedsim.results.reader import Run, load_run, load_runs, read_table
from fedsim.results.schema import (
    ARTIFACT_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DEVICE_COLUMNS,
    DEVICES_FILE,
    FLEET_FILE,
    MODEL_FILE,
    PARTITION_FILE,
    PROGRAM_FILE,
    RESUME_DIR,
    ROUND_COLUMNS,
    ROUNDS_FILE,
    STATE_DIR,
    STATE_FILE,
    RunFolderError,
    model_path,
    part_name,
    part_round,
)
from fedsim.results.writer import RunWriter, versions

__all__ = [
    "ARTIFACT_FILE",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "DEVICES_FILE",
    "DEVICE_COLUMNS",
    "FLEET_FILE",
    "MODEL_FILE",
    "PARTITION_FILE",
    "PROGRAM_FILE",
    "RESUME_DIR",
    "ROUNDS_FILE",
    "ROUND_COLUMNS",
    "STATE_DIR",
    "STATE_FILE",
    "Run",
    "RunFolderError",
    "RunWriter",
    "claim_run_folder",
    "created_folders",
    "default_out",
    "load_run",
    "load_runs",
    "model_path",
    "part_name",
    "part_round",
    "read_table",
    "versions",
]
