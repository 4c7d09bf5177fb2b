"""A grid of runs over any settings in one Ray session, each point a normal run folder.

The grid is devices x partitions x seeds x any other settings given as lists (`grid={"lr": [0.01,
0.1]}`, `fedsim sweep --lr 0.01,0.1`, or a `[sweep]` table in the TOML file). A point that fails is
recorded with its error and the sweep goes on. sweep.json records the base settings, the grid and
each point's outcome, so `resume_sweep` runs only the points that did not complete; sweep.parquet
joins every point's config with its rounds (failed points: one row with status "failed" and the error).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.experiment.config import Config, ConfigError, config_fields
from fedsim.experiment.simulation import resume, run
from fedsim.results import CONFIG_FILE, RunFolderError, claim_run_folder, load_runs
from fedsim.results.folder import release_claim, take_claim

SWEEP_FILE = "sweep.parquet"
SWEEP_JSON = "sweep.json"


def point_name(devices: int, partition: str, seed: int, others: Mapping[str, Any] | None = None) -> str:
    """devices-100_iid_seed-0, then key-value for every other setting the sweep varies."""
    extra = "".join(f"_{k}-{v}" for k, v in (others or {}).items())
    return f"devices-{devices}_{partition}_seed-{seed}{extra}".replace(":", "-").replace(",", "-").replace("/", "-")


ACTIVE: list[Path] = []  # sweep folders this process has run in, latest last


def sweep(
    base: Config,
    devices: Sequence[int] | None = None,
    partitions: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: bool = True,
    grid: Mapping[str, Sequence[Any]] | None = None,
    engine: str = "ray",
) -> pd.DataFrame:
    """Run every point of devices x partitions x seeds x `grid` with `base`'s other settings; return
    sweep.parquet. Unset dimensions take `base`'s value. engine: "ray" (one Ray session for every
    point) or "local" (each point's hosts in this process, no Ray).

    `base.per_round`, when set, is capped at each point's device count, so one sweep can keep rounds
    at most K devices from 10 to 10,000 devices.
    """
    axes = _axes(base, devices, partitions, seeds, grid)
    configs = _configs(base, axes)  # every point's settings are checked before anything runs
    folder = claim_run_folder(
        out or Path("results") / "sweeps" / base.run_name / dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
        free_name=out is None,
    )
    try:  # the sweep's folder is this process's until the sweep ends
        return _run_points(folder, base, axes, configs, progress, {}, _engine(engine))
    finally:
        release_claim(folder)


def resume_sweep(path: str | os.PathLike[str], progress: bool = True) -> pd.DataFrame:
    """Run the points of a sweep that did not complete: an interrupted point is resumed, one that
    never started (or failed before its first round) runs from the start; completed points stay."""
    folder = Path(path)
    try:
        saved = json.loads((folder / SWEEP_JSON).read_text())
    except (OSError, ValueError):
        raise RunFolderError(f"--resume {folder}: not a sweep folder (no readable {SWEEP_JSON})") from None
    base = Config.from_dict(saved["base"])
    axes = {k: list(v) for k, v in saved["grid"].items()}
    done = {p["point"]: p for p in saved["points"] if p["status"] == "completed"}
    take_claim(folder)  # one process at a time continues a sweep
    try:
        return _run_points(folder, base, axes, _configs(base, axes), progress, done, saved.get("engine", "ray"))
    finally:
        release_claim(folder)


def _axes(
    base: Config,
    devices: Sequence[int] | None,
    partitions: Sequence[str] | None,
    seeds: Sequence[int] | None,
    grid: Mapping[str, Sequence[Any]] | None,
) -> dict[str, list[Any]]:
    grid = dict(grid or {})
    known = {f for f in config_fields() if f not in ("out", "name")}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ConfigError(f"cannot sweep over {', '.join(unknown)}: not a run setting")
    axes = {
        "devices": list(devices or grid.pop("devices", None) or [base.devices]),
        "partition": list(partitions or grid.pop("partition", None) or [base.partition_spec]),
        "seed": list(seeds or grid.pop("seed", None) or [base.seed]),
    }
    for key, values in grid.items():
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if not values:
            raise ConfigError(f"sweep over {key}: no values")
        axes[key] = values
    return axes


def _configs(base: Config, axes: Mapping[str, list[Any]]) -> list[tuple[str, Config]]:
    """Every point's name and settings, in grid order. Where the sweep compares strategies, each
    strategy takes only its own settings (`--strategy fedavg,fedadam --server-lr 0.01,0.1`: the server
    learning rate varies for fedadam; fedavg, which has none, runs once)."""
    from fedsim.strategies import STRATEGIES, strategy_params

    others = [k for k in axes if k not in ("devices", "partition", "seed") and len(axes[k]) > 1]
    compares = len(axes.get("strategy", [])) > 1
    out, seen = [], set()
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        d = point["devices"]
        per_round = (
            min(base.per_round, d)
            if base.per_round is not None and "per_round" not in point
            else point.get("per_round")
        )
        changes = {**point, "per_round": per_round, "hosts": point.get("hosts", _hosts(base, d))}
        dropped: set[str] = set()
        if compares and point["strategy"] in STRATEGIES:
            takes = set(STRATEGIES[point["strategy"]].param_names())
            dropped = {k for k in strategy_params() if k not in takes and (k in point or getattr(base, k) is not None)}
            changes.update({k: None for k in dropped})  # None: not set (the strategy's own default)
        try:
            config = base.replace(**changes)
        except ConfigError as e:
            raise ConfigError(f"sweep point {point}: {e}") from None
        name = point_name(d, config.partition_spec, config.seed, {k: point[k] for k in others if k not in dropped})
        if name not in seen:  # a strategy's point repeated only by another strategy's settings
            seen.add(name)
            out.append((name, config))
    return out


def _engine(name: str) -> str:
    if name not in ("ray", "local"):
        raise ConfigError(f"--engine must be ray or local, got {name!r}")
    return name


def _run_points(
    folder: Path,
    base: Config,
    axes: Mapping[str, list[Any]],
    configs: list[tuple[str, Config]],
    progress: bool,
    done: Mapping[str, dict[str, Any]],
    engine: str = "ray",
) -> pd.DataFrame:
    from fedsim.engine.local import LocalEngine

    points: list[dict[str, Any]] = []
    ACTIVE.append(folder)  # what an interrupted `fedsim sweep` names to resume
    todo = [name for name, _ in configs if name not in done]
    print(
        f"fedsim: sweep in {folder}: {len(todo)} of {len(configs)} points to run",
        file=sys.stderr,
        flush=True,
    )
    owns_ray = _connect(base.address) if engine == "ray" else False

    def saved() -> str:
        return json.dumps(
            {"base": base.to_dict(), "grid": axes, "engine": engine, "points": points}, indent=2, default=str
        )

    try:
        for name, config in configs:
            point = {"point": name, **{k: getattr(config, k) for k in axes}}
            if name in done:
                points.append(done[name])
                continue
            run_folder = folder / name
            shown = " ".join(f"{k}={getattr(config, k)}" for k in axes)
            print(f"fedsim: point {todo.index(name) + 1}/{len(todo)}: {shown}", file=sys.stderr, flush=True)
            local = LocalEngine(config.hosts or 1) if engine == "local" else None
            try:
                if (run_folder / CONFIG_FILE).is_file():
                    resume(run_folder, progress=progress, engine=local)  # a point cut short by an earlier stop
                else:
                    # every point in the sweep's MLflow experiment (where --mlflow logs), named by its folder
                    run(
                        config.replace(
                            out=str(run_folder), name=name, mlflow_experiment=config.mlflow_experiment or base.run_name
                        ),
                        progress=progress,
                        engine=local,
                    )
                point.update(status="completed", error="")
            except Exception as e:  # a failing point is data: record it and go on
                point.update(status="failed", error=f"{type(e).__name__}: {e}")
            points.append(point)
            (folder / SWEEP_JSON).write_text(saved())
    finally:
        if owns_ray:
            from fedsim.engine.ray_session import disconnect

            disconnect()
    (folder / SWEEP_JSON).write_text(saved())
    table = _table(folder, points)
    table.to_parquet(folder / SWEEP_FILE, index=False)
    table.attrs["folder"] = str(folder)
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
