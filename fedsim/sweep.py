"""A grid of runs (devices x partitions x seeds) in one Ray session, each point a normal run folder.

A point that fails is recorded with its error and the sweep goes on. sweep.parquet joins every
point's config with its rounds (failed points: one row with status "failed" and the error).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.config import Config
from fedsim.results import claim_run_folder, load_runs
from fedsim.simulation import run

SWEEP_FILE = "sweep.parquet"


def point_name(devices: int, partition: str, seed: int) -> str:
    return f"devices-{devices}_{partition.replace(':', '-')}_seed-{seed}"


def sweep(
    base: Config,
    devices: Sequence[int],
    partitions: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every (devices, partition, seed) point with `base`'s other settings; return sweep.parquet.

    `base.per_round`, when set, is capped at each point's device count, so one sweep can keep rounds
    at most K devices from 10 to 10,000 devices.
    """
    partitions = list(partitions or [base.partition_spec])
    seeds = list(seeds or [base.seed])
    grid = list(itertools.product(devices, partitions, seeds))
    # Check every point's settings before anything runs.
    configs = []
    for d, p, s in grid:
        per_round = min(base.per_round, d) if base.per_round is not None else None
        configs.append(base.replace(devices=d, partition=p, seed=s, per_round=per_round, hosts=_hosts(base, d)))
    folder = claim_run_folder(out or Path("results") / "sweeps" / base.name / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    points: list[dict[str, Any]] = []
    owns_ray = _connect(base.address)
    try:
        for config in configs:
            name = point_name(config.devices, config.partition, config.seed)
            point = {"point": name, "devices": config.devices, "partition": config.partition, "seed": config.seed}
            try:
                run(config.replace(out=str(folder / name), name=name), progress=progress)
                point.update(status="completed", error="")
            except Exception as e:  # a failing point is data: record it and go on
                point.update(status="failed", error=f"{type(e).__name__}: {e}")
            points.append(point)
            (folder / "sweep.json").write_text(json.dumps({"base": base.to_dict(), "points": points}, indent=2))
    finally:
        if owns_ray:
            from fedsim.engine.ray import disconnect

            disconnect()
    table = _table(folder, points)
    table.to_parquet(folder / SWEEP_FILE, index=False)
    return table


def _hosts(base: Config, devices: int) -> int | None:
    return min(base.hosts, devices) if base.hosts is not None else None


def _connect(address: str | None) -> bool:
    """One Ray session for the whole sweep; each point's engine joins it instead of starting its own."""
    from fedsim.engine.ray import connect

    return connect(address)


def _table(folder: Path, points: list[dict[str, Any]]) -> pd.DataFrame:
    done = [folder / p["point"] for p in points if p["status"] == "completed"]
    frames = []
    if done:
        rounds = load_runs(done)
        rounds["point"] = [Path(r).name for r in rounds["run"]]
        rounds["status"], rounds["error"] = "completed", ""
        frames.append(rounds)
    failed = [p for p in points if p["status"] == "failed"]
    if failed:
        frames.append(pd.DataFrame(failed))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(points)
