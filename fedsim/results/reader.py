"""Reading run folders back into pandas: `load_run` (one run's tables, settings and files) and
`load_runs` (the rounds of many runs in one tidy table, every setting a column). Folders written by
earlier versions (single-file tables, flat config.json) read the same way."""

from __future__ import annotations

import glob as globlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq

from fedsim.results.migrate import flat_config
from fedsim.results.schema import (
    ARTIFACT_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    DEVICE_COLUMNS,
    DEVICE_SCHEMA,
    DEVICES_FILE,
    PARTITION_FILE,
    RESUME_DIR,
    ROUND_COLUMNS,
    ROUND_SCHEMA,
    ROUNDS_FILE,
    STATE_FILE,
    RunFolderError,
    part_round,
)


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """A table of the run folder as one DataFrame: a folder of per-round parts, or a single file
    (folders of earlier versions); empty with `columns` if there is none yet."""
    if path.is_dir():
        parts = sorted(str(f) for f in path.iterdir() if part_round(f.name) is not None)
        if not parts:
            return pd.DataFrame(columns=columns)
        table = pq.ParquetDataset(parts).read().to_pandas()  # with the first part's schema
        schema = {tuple(ROUND_COLUMNS): ROUND_SCHEMA, tuple(DEVICE_COLUMNS): DEVICE_SCHEMA}.get(tuple(columns))
        if schema is None or set(columns) <= set(table.columns):
            return table
        # The first part was written by an earlier version (a resumed run's) without newer columns:
        # read again with the table's own schema (and the last part's, which has the newest), so they
        # read as missing values instead of vanishing.
        schema = pa.unify_schemas([schema, pq.read_schema(parts[-1])], promote_options="permissive")
        return pyarrow.dataset.dataset(parts, schema=schema, format="parquet").to_table().to_pandas()
    if path.is_file():
        return pd.read_parquet(path)
    return pd.DataFrame(columns=columns)


def resume_state(path: Path, rounds_completed: int, finished: bool = False) -> dict[str, np.ndarray]:
    """The strategy's server state committed with round `rounds_completed` ({} if it keeps none);
    of a finished run, the state it ended with."""
    f = path / STATE_FILE if finished else path / RESUME_DIR / f"round-{rounds_completed}.{STATE_FILE}"
    if not f.is_file():
        return {}
    with np.load(f) as data:
        return {k: data[k] for k in data.files}


def resume_checkpoint(path: Path, rounds_completed: int, finished: bool = False) -> bytes:
    """The committed global checkpoint after `rounds_completed` rounds of the run in `path` (of a
    finished run: its global.ckpt)."""
    f = path / CHECKPOINT_FILE if finished else path / RESUME_DIR / f"round-{rounds_completed}.ckpt"
    if not f.is_file():
        raise RunFolderError(f"{path}: no checkpoint for round {rounds_completed} ({f} is missing); cannot resume")
    return f.read_bytes()


@dataclass
class Run:
    """A finished (or interrupted) run, read back: its folder, settings and tables."""

    path: Path
    meta: dict[str, Any]
    rounds: pd.DataFrame
    devices: pd.DataFrame
    partition: pd.DataFrame  # device_id, samples, label_0..label_{C-1}: what each device holds

    @property
    def config(self) -> dict[str, Any]:
        """Every setting by its flat name (config.json keeps them by section)."""
        return flat_config(self.meta["config"])

    @property
    def artifact(self) -> dict[str, Any] | None:
        """The artifact report (artifact.json): signatures, ops, sizes, latency on the run's machine."""
        f = self.path / ARTIFACT_FILE
        return json.loads(f.read_text()) if f.is_file() else None

    def keras_model(self, **kwargs: Any) -> Any:
        """The trained Keras model (fedsim.load_model of this folder; loads TensorFlow)."""
        from fedsim.artifact import load_model

        return load_model(self.path, **kwargs)

    @property
    def final_accuracy(self) -> float:
        """Test accuracy of the last evaluated round (with --eval-every, rounds in between have none)."""
        scored = self.rounds["test_accuracy"].dropna()
        return float(scored.iloc[-1]) if len(scored) else float("nan")

    def __repr__(self) -> str:
        return (
            f"Run({str(self.path)!r}, status={self.meta.get('status')!r}, rounds={len(self.rounds)}, "
            f"final_accuracy={self.final_accuracy:.4f})"
        )


def load_run(path: str | os.PathLike[str]) -> Run:
    p = Path(path)
    config_file = p / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{p} is not a fedsim run folder (no {CONFIG_FILE})")
    meta = json.loads(config_file.read_text())

    return Run(
        p,
        meta,
        read_table(p / ROUNDS_FILE, ROUND_COLUMNS),
        read_table(p / DEVICES_FILE, DEVICE_COLUMNS),
        read_table(p / PARTITION_FILE, ["device_id", "samples"]),
    )


def _expand(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in items:
        s = str(item)
        if globlib.has_magic(s):
            out.extend(Path(m) for m in sorted(globlib.glob(s)) if (Path(m) / CONFIG_FILE).is_file())
        elif (Path(s) / CONFIG_FILE).is_file():
            out.append(Path(s))
        elif Path(s).is_dir():  # a folder of runs, e.g. results/<name>/
            out.extend(sorted(c.parent for c in Path(s).rglob(CONFIG_FILE)))
        else:
            raise FileNotFoundError(f"{s}: no fedsim run folder there")
    return out


def load_runs(paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> pd.DataFrame:
    """Rounds of many runs in one tidy table: each row carries its run's folder and config keys."""
    frames = []
    for path in _expand(paths):
        run = load_run(path)
        frame = run.rounds.copy()
        for key, value in run.config.items():
            frame[key] = value
        frame["strategy"] = run.meta.get("strategy_name", run.config.get("strategy"))  # a custom one by name
        frame["status"] = run.meta.get("status")  # completed, interrupted, failed, running
        frame["hosts_used"] = run.meta.get("hosts")
        frame["run"] = str(path)
        frames.append(frame)
    if not frames:
        raise FileNotFoundError(f"no fedsim run folders in {paths!r}")
    return pd.concat(frames, ignore_index=True)
