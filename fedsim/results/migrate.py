"""Run folders written by earlier versions of fedsim, read and resumed as today's: tables written as
one file (split into per-round parts when the run is resumed), a table whose first part lacks columns
added since, and a config.json with every setting at the top level instead of by section."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedsim.core.settings import flat_view
from fedsim.results.schema import (
    DEVICE_COLUMNS,
    DEVICE_SCHEMA,
    DEVICES_FILE,
    ROUND_COLUMNS,
    ROUND_SCHEMA,
    ROUNDS_FILE,
    part_name,
)


def split_legacy_tables(folder: Path, rounds_completed: int) -> None:
    """A table written as one file is split into per-round parts (rows up to `rounds_completed`)."""
    for name, columns, schema in (
        (ROUNDS_FILE, ROUND_COLUMNS, ROUND_SCHEMA),
        (DEVICES_FILE, DEVICE_COLUMNS, DEVICE_SCHEMA),
    ):
        table = folder / name
        if not table.is_file():
            continue
        frame = pd.read_parquet(table)
        legacy = table.with_name(f".{name}.legacy")
        os.replace(table, legacy)
        table.mkdir()
        for round_num in sorted(int(r) for r in frame["round"].unique()):
            rows = frame[frame["round"] == round_num]
            if round_num <= rounds_completed:
                part = table / part_name(round_num)
                tmp = part.with_name(f".{part.name}.tmp")
                pq.write_table(
                    pa.Table.from_pandas(rows.reindex(columns=columns), schema=schema, preserve_index=False), tmp
                )
                os.replace(tmp, part)
        legacy.unlink()


def flat_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """config.json's settings by their flat names, whether written by section (fedsim 0.3 on) or flat
    (before), each with the meaning it had when it ran: before 0.3, classes:K was the cyclic label
    assignment (today's classes:K:cyclic). What `load_runs` makes columns of and a resume starts from;
    no validation: a folder of any version reads."""
    flat = flat_view(config)
    by_section = any(isinstance(v, Mapping) for v in config.values())
    spec = flat.get("partition")
    if not by_section and isinstance(spec, str) and spec.startswith("classes:") and spec.count(":") == 1:
        flat["partition"] = f"{spec}:cyclic"
    return flat
