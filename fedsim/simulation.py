"""Wiring for one run, shared by the CLI and notebooks: config -> data -> artifact -> engine -> loop -> run folder.

Everything that can be wrong with the input (settings, data, run folder) is checked before Ray starts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

from fedsim.config import Config
from fedsim.coordinator import Coordinator
from fedsim.data import DataRecipe
from fedsim.engine.base import Engine, HostSettings, Setup
from fedsim.model import MODELS
from fedsim.model.builders import ArtifactRecipe, ModelBuilder
from fedsim.results import (
    CONFIG_FILE, MODEL_FILE, Run, RunFolderError, RunWriter, claim_run_folder, default_out, load_run,
    resume_checkpoint, versions,
)
from fedsim.strategies import Strategy, make_strategy


def run(
    config: Config | None = None,
    *,
    engine: Engine | None = None,
    strategy: Strategy | None = None,
    model_builder: ModelBuilder | None = None,
    progress: bool = True,
    **settings: Any,
) -> Run:
    """Run one experiment and return it loaded from its folder.

    `fedsim.run(devices=10, rounds=5)` or `fedsim.run(Config(...))`; keyword settings override the
    config. `engine` defaults to Ray (RayEngine(config.hosts, config.address)); pass LocalEngine() to
    run in-process. `model_builder` replaces the named model with your own Keras builder.
    """
    started = time.perf_counter()
    config = (config or Config()).replace(**settings) if settings else (config or Config())
    data = DataRecipe(config.dataset, config.data_dir, config.seed, config.synthetic_samples)
    data.check()  # a missing data set fails here, before any folder or Ray process exists
    out = claim_run_folder(config.out or default_out(config.name))
    strategy = strategy or make_strategy(config.strategy)
    builder = model_builder or MODELS[config.model]
    meta: dict[str, Any] = {
        "config": config.to_dict(),
        "versions": versions(),
        "strategy": type(strategy).__name__,
        "model_builder": f"{builder.__module__}.{getattr(builder, '__qualname__', repr(builder))}",
        "started": _now(),
    }
    writer = RunWriter(out, meta)
    recipe = ArtifactRecipe(builder, config.lr, config.seed)
    _guarded(writer, lambda: _run(config, data, strategy, recipe, engine, writer, progress, started))
    return load_run(out)


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def resume(
    path: str | os.PathLike[str],
    *,
    engine: Engine | None = None,
    strategy: Strategy | None = None,
    progress: bool = True,
    hosts: int | None = None,
    address: str | None = None,
) -> Run:
    """Continue an interrupted run in its own folder after its last committed round.

    The run's saved settings and .tflite are used as they are; only where it runs (hosts, address)
    may change, since neither changes the results. The rounds table comes out identical to an
    uninterrupted run's.
    """
    started = time.perf_counter()
    folder = Path(path)
    meta_file = folder / CONFIG_FILE
    if not meta_file.is_file():
        raise RunFolderError(f"--resume {folder}: not a fedsim run folder (no {CONFIG_FILE})")
    meta = json.loads(meta_file.read_text())
    changes = {k: v for k, v in (("hosts", hosts), ("address", address)) if v is not None}
    config = Config.from_dict(meta["config"]).replace(**changes)
    done = int(meta.get("rounds_completed", 0))
    if done >= config.rounds:
        raise RunFolderError(f"--resume {folder}: all {config.rounds} rounds are already complete")
    data = DataRecipe(config.dataset, config.data_dir, config.seed, config.synthetic_samples)
    data.check()
    artifact = (folder / MODEL_FILE).read_bytes()
    initial = resume_checkpoint(folder, done) if done else None
    meta["config"] = config.to_dict()
    for stale in ("error", "finished"):
        meta.pop(stale, None)
    meta.setdefault("resumed", []).append({"after_round": done, "at": _now()})
    writer = RunWriter(folder, meta, resume_from=done)
    _guarded(writer, lambda: _run(config, data, strategy or make_strategy(config.strategy), artifact, engine, writer,
                                  progress, started, initial, done + 1))
    return load_run(folder)


def _guarded(writer: RunWriter, body: Any) -> None:
    """Run `body`, then record how the run ended in config.json (completed, or failed and why)."""
    try:
        body()
    except BaseException as e:
        try:
            writer.write_meta(status="failed", error=f"{type(e).__name__}: {e}", finished=_now())
        finally:
            writer.close()
        raise
    writer.write_meta(status="completed", finished=_now())
    writer.close()


def _run(config, data, strategy, artifact, engine, writer, progress, started, initial=None, start_round=1) -> None:  # noqa: ANN001
    if engine is None:
        from fedsim.engine.ray import RayEngine

        engine = RayEngine(config.hosts, config.address, config.round_timeout)
    settings = HostSettings(config.local_epochs, config.batch_size, config.seed)
    setup = Setup(artifact, data, config.devices, settings, config.partition, config.min_samples,
                  config.device_test_fraction)
    with engine:
        prepared = engine.start(setup)
        writer.write_model(prepared.artifact)
        if prepared.label_counts is not None:
            writer.write_partition(prepared.label_counts, prepared.test_sizes)
        train_samples = int(prepared.dataset_info["train_samples"])
        writer.write_meta(
            hosts=engine.num_hosts,
            host_nodes=getattr(engine, "host_nodes", None),
            engine=type(engine).__name__,
            dataset=prepared.dataset_info,
            # > 1 when devices outnumber training samples: each sample is then held by up to this many devices
            sample_reuse=-(-config.devices // train_samples),
        )
        if initial is None:
            initial = engine.initial_checkpoint()
        Coordinator(config, engine, strategy, engine.evaluate, initial, writer, progress, started).run(start_round)
