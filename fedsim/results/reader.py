"""Reading run folders back into pandas: `load_run` (one run's tables, settings and files) and
`load_runs` (the rounds of many runs in one tidy table, every setting a column). Folders written by
earlier versions (single-file tables, flat config.json) read the same way."""

from __future__ import annotations

import glob as globlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset
import pyarrow.parquet as pq

from fedsim.core.shelf import Shelf
from fedsim.results.migrate import flat_config
from fedsim.results.schema import (
    ARTIFACT_FILE,
    CONFIG_FILE,
    DEVICE_COLUMNS,
    DEVICE_SCHEMA,
    DEVICES_FILE,
    PARTITION_FILE,
    ROUND_COLUMNS,
    ROUND_SCHEMA,
    ROUNDS_FILE,
    STATE_DIR,
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
        try:
            table = pq.ParquetDataset(parts).read().to_pandas()  # with the first part's schema
        except (pa.ArrowException, OSError) as e:
            raise RunFolderError(_damage_message(path, damaged_parts(path)) or f"{path}: unreadable ({e})") from None
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
        """The trained Keras model (fedsim.load_model of this folder; loads TensorFlow). It takes float
        inputs scaled as the artifact scales them (images: uint8 / 255, fedsim.data.scale_images);
        the .tflite takes the raw uint8 pixels."""
        from fedsim.artifact import load_model

        return load_model(self.path, **kwargs)

    def device_state(self, device_id: int) -> dict[str, np.ndarray]:
        """What device `device_id` keeps after the run's last committed round (an error-feedback
        residual, a personal model), by key; empty if it keeps nothing."""
        found = dict(self.device_states([device_id]))
        return found.get(int(device_id), {})

    def device_states(self, device_ids: Iterable[int] | None = None) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(device id, what it keeps) for `device_ids` (default: every device that keeps something), in
        id order, each segment opened once."""
        index = self.device_state_index()
        wanted = sorted(index) if device_ids is None else sorted(int(d) for d in device_ids if int(d) in index)
        shelf = Shelf(self.path / STATE_DIR, -1, cache_bytes=0)
        try:
            for d in wanted:
                yield d, {k: v.copy() for k, v in shelf.read(index[d], d).items()}
        finally:
            shelf.close()

    def device_state_index(self) -> dict[int, str]:
        """device id -> the segment of device_state/ holding its state, for every device that keeps some."""
        path = self.path / STATE_FILE
        if not path.is_file():
            return {}
        with np.load(path) as saved:
            if "device_state.ids" not in saved.files:
                return {}
            ids, slots, names = saved["device_state.ids"], saved["device_state.slots"], saved["device_state.segments"]
        return {int(d): str(names[s]) for d, s in zip(ids, slots)}

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


def damaged_parts(table: Path) -> list[tuple[Path, str]]:
    """The parts of a table folder that parquet cannot read (truncated, overwritten), with why."""
    bad = []
    for f in sorted(table.iterdir()) if table.is_dir() else []:
        if part_round(f.name) is None:
            continue
        try:
            pq.read_metadata(f)
        except (pa.ArrowException, OSError) as e:
            bad.append((f, str(e).splitlines()[0] if str(e) else type(e).__name__))
    return bad


def _damage_message(table: Path, bad: list[tuple[Path, str]]) -> str:
    if not bad:
        return ""
    names = ", ".join(f"{f.parent.name}/{f.name}" for f, _ in bad[:5])
    return (
        f"{table.parent}: damaged table part(s) {names} ({bad[0][1]}); `fedsim run --resume {table.parent}` "
        "cuts the run back to its last intact round when it can"
    )


def read_meta(path: Path) -> dict[str, Any]:
    """A run folder's config.json; RunFolderError (one line) if it is missing or unreadable."""
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{path} is not a fedsim run folder (no {CONFIG_FILE})")
    try:
        meta = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{config_file}: unreadable ({e})") from None
    if not isinstance(meta, dict) or "config" not in meta:
        raise RunFolderError(f"{config_file}: not a fedsim run's config.json")
    return meta


def load_run(path: str | os.PathLike[str]) -> Run:
    """A run folder's settings and tables: the committed rounds (a round whose write a kill cut short
    is left out; --resume runs it again)."""
    p = Path(path)
    meta = read_meta(p)
    rounds = read_table(p / ROUNDS_FILE, ROUND_COLUMNS)
    devices = read_table(p / DEVICES_FILE, DEVICE_COLUMNS)
    done = meta.get("rounds_completed")
    if done is not None and len(rounds) and int(rounds["round"].max()) > int(done):
        rounds = rounds[rounds["round"] <= int(done)].reset_index(drop=True)
        devices = devices[devices["round"] <= int(done)].reset_index(drop=True)
    return Run(p, meta, rounds, devices, read_table(p / PARTITION_FILE, ["device_id", "samples"]))


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
        try:
            run = load_run(path)
        except RunFolderError as e:  # one damaged run must not hide every other one
            warnings.warn(f"skipping {path}: {e}", stacklevel=2)
            continue
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
