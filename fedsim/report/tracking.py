"""Per-round scalars for experiment trackers: TensorBoard event files (written without TensorFlow)
and MLflow runs (where mlflow is installed).

`--tensorboard DIR` writes one event file per run under DIR/<run folder name>/ (DIR/<name>/<time>/
for a default results/<name>/<time> folder) with the round
table's numbers (test accuracy and loss, train loss, devices, seconds, bytes) at step = round, so
`tensorboard --logdir DIR` compares runs side by side. The file is TFRecord framing (length, masked
crc32c, payload, masked crc32c) around TensorBoard's Event protos, written here: TensorBoard's own
writer imports TensorFlow when it is installed, and the coordinator never does.

`--mlflow URI` logs each run as an MLflow run in the experiment named by --name: the settings as
params, the same scalars as metrics at step = round, the run folder's config.json, artifact.json,
model.tflite and global.ckpt as artifacts at the end, and how it ended as the run's status. A resumed
or extended run goes on in the same MLflow run. Tracking must never cost the run: metrics are logged
asynchronously, and a tracking server that fails mid-run is reported once and then left alone (the
run folder has every figure).
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crc32c

from fedsim.checkpoint.tfv1 import mask_crc
from fedsim.core.settings import ConfigError, Section, need, setting


@dataclass(frozen=True)
class TrackingSettings(Section):
    section = "tracking"
    tensorboard: str | None = setting(
        None, "also write each round's scalars as TensorBoard event files under DIR (tensorboard --logdir DIR)"
    )
    mlflow: str | None = setting(
        None, "also log the run to MLflow at this tracking URI (e.g. sqlite:///mlflow.db), experiment --name"
    )
    mlflow_experiment: str | None = setting(
        None, "the MLflow experiment to log in (default: --name; a sweep: the sweep's --name)"
    )

    def check(self) -> None:
        for name, what in (("tensorboard", "a folder"), ("mlflow", "a tracking URI"), ("mlflow_experiment", "a name")):
            value = getattr(self, name)
            need(value is None or value.strip() != "", name, f"must be {what}", value)


SCALARS = (
    "test_accuracy",
    "test_loss",
    "train_loss",
    "device_acc_mean",
    "devices_accepted",
    "samples",
    "wall_s",
    "hosts_s",
    "evaluate_s",
    "bytes_up",
)
# MLflow also gets the clocks, real and simulated, so its charts can plot against either.
MLFLOW_SCALARS = (
    *SCALARS,
    "devices_selected",
    "devices_reported",
    "bytes_down",
    "elapsed_s",
    "sim_round_s",
    "sim_elapsed_s",
    "sim_energy_j",
)
# The run folder's files an MLflow run keeps (the tables stay in the folder: load_run reads them).
MLFLOW_ARTIFACTS = ("config.json", "artifact.json", "model.tflite", "global.ckpt", "server_state.npz")


def _scalars(round_row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, float]:
    """The row's numbers among `keys`; NaN (a round without evaluation) and missing ones left out."""
    out = {}
    for key in keys:
        value = round_row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
            out[key] = float(value)
    return out


def _record(data: bytes) -> bytes:
    """One TFRecord: the payload's length and both checksums, as TensorBoard reads them."""
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", mask_crc(crc32c.crc32c(header)))
        + data
        + struct.pack("<I", mask_crc(crc32c.crc32c(data)))
    )


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


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

        values = [
            summary_pb2.Summary.Value(tag=key, simple_value=value)
            for key, value in _scalars(round_row, SCALARS).items()
        ]
        if values:
            self._write(
                self._event_pb2.Event(
                    wall_time=time.time(), step=int(round_row["round"]), summary=summary_pb2.Summary(value=values)
                )
            )

    def close(self, meta: dict[str, Any] | None = None) -> None:
        self._f.close()


# How a fedsim run ended -> an MLflow run status.
_MLFLOW_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


def mlflow_client(uri: str) -> Any:
    """An MlflowClient for the tracking URI (e.g. sqlite:///mlflow.db, http://host:5000), checked by
    asking it for an experiment; ConfigError in one line if mlflow is missing or the store refuses."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise ConfigError(
            "--mlflow needs the mlflow package: pip install mlflow (or mlflow-skinny with "
            "sqlalchemy and alembic for a sqlite:/// store)"
        ) from None
    import logging

    for name in ("mlflow.store.db.utils", "alembic"):  # a new sqlite store's table set-up, told at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as e:  # any store or connection failure: the run must not start half-tracked
        why = " ".join(str(e).split()) or type(e).__name__  # its whole reason (it names the fix), one line
        raise ConfigError(f"--mlflow {uri}: MLflow refused it: {why}") from None
    return client


class MLflowLog:
    """One fedsim run as one MLflow run (see the module's docstring)."""

    def __init__(self, client: Any, experiment: str, folder: Path, meta: dict[str, Any]) -> None:
        self.client = client
        self.folder = folder
        self._pending: list[Any] = []
        self._failed = False
        run_id = meta.get("mlflow_run_id")
        if run_id and self._exists(run_id):  # a resumed or extended run goes on where it was
            client.update_run(run_id, status="RUNNING")
        else:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
            tags = {
                "fedsim.folder": str(folder.resolve()),
                "fedsim.version": meta.get("versions", {}).get("fedsim", ""),
                "fedsim.strategy": meta.get("strategy_name", ""),
                "fedsim.model": meta.get("model", ""),
            }
            run_id = client.create_run(experiment_id, run_name=folder.name, tags=tags).info.run_id
            from mlflow.entities import Param

            from fedsim.results.migrate import flat_config

            params = {k: v for k, v in flat_config(meta.get("config", {})).items() if v is not None}
            client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in sorted(params.items())])
            meta["mlflow_run_id"] = run_id  # recorded in config.json, so a resume finds this run
        self.run_id = run_id

    def _exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
            return True
        except Exception:  # deleted, or another store: start a new run
            return False

    def _guard(self, what: str, call: Any) -> None:
        if self._failed:
            return
        try:
            call()
        except Exception as e:
            self._failed = True
            print(
                f"fedsim: MLflow logging stopped ({what}: {type(e).__name__}: {_first_line(e)}); "
                f"the run goes on and {self.folder} has every figure"
            )

    def record(self, round_row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        step = int(round_row["round"])
        metrics = [Metric(k, v, stamp, step) for k, v in _scalars(round_row, MLFLOW_SCALARS).items()]
        if metrics:
            self._guard(
                "metrics",
                lambda: self._pending.append(self.client.log_batch(self.run_id, metrics=metrics, synchronous=False)),
            )

    def close(self, meta: dict[str, Any] | None = None) -> None:
        def finish() -> None:
            for op in self._pending:
                op.wait()
            for name in MLFLOW_ARTIFACTS:
                if (self.folder / name).is_file():
                    self.client.log_artifact(self.run_id, str(self.folder / name))
            status = (meta or {}).get("status", "failed")
            self.client.set_terminated(self.run_id, status=_MLFLOW_STATUS.get(status, "FAILED"))

        self._guard("closing", finish)
        self._pending.clear()


class Trackers:
    """The experiment trackers a config asks for. Made before the run folder exists (a tracking URI
    that cannot be used fails the run before anything is written); `start` opens them for a folder."""

    def __init__(self, tensorboard: str | None = None, mlflow: str | None = None, experiment: str = "fedsim") -> None:
        self.tensorboard = tensorboard
        self.experiment = experiment
        self.mlflow = mlflow_client(mlflow) if mlflow else None
        self.open: list[Any] = []

    @classmethod
    def of(cls, settings: TrackingSettings, name: str) -> Trackers:
        """The trackers of a run's tracking settings (its MLflow experiment: --mlflow-experiment, else `name`)."""
        return cls(settings.tensorboard, settings.mlflow, settings.mlflow_experiment or name)

    def __bool__(self) -> bool:
        return bool(self.tensorboard or self.mlflow)

    def start(self, folder: Path, meta: dict[str, Any]) -> Trackers:
        """Open each tracker for the run in `folder`; MLflow records its run id in `meta`."""
        if self.tensorboard:
            # a default folder results/<name>/<time> gives DIR/<name>/<time> (runs grouped by what ran,
            # as under results/); a folder the user named (--out) gives DIR/<its name>
            name = (meta.get("config", {}).get("run", {}) or {}).get("name")
            grouped = name and folder.parent.name == name
            self.open.append(TensorBoardLog(self.tensorboard, f"{name}/{folder.name}" if grouped else folder.name))
        if self.mlflow is not None:
            self.open.append(MLflowLog(self.mlflow, self.experiment, folder, meta))
        return self

    def record(self, round_row: dict[str, Any]) -> None:
        for tracker in self.open:
            tracker.record(round_row)

    def close(self, meta: dict[str, Any] | None = None) -> None:
        for tracker in self.open:
            tracker.close(meta)
