"""Wiring for one run, shared by the CLI and notebooks: config -> data -> artifact -> engine -> loop -> run folder.

Everything that can be wrong with the input (settings, data, run folder) is checked before Ray starts.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.config import Config, ConfigError, _is_import_path
from fedsim.coordinator import Coordinator
from fedsim.data import DataRecipe, Dataset
from fedsim.engine.base import Engine, HostSettings, Setup
from fedsim.fleet import Clock, FleetError, load_fleet, read_latency
from fedsim.model.builders import MODELS, ArtifactRecipe, ModelBuilder, Optimizer, builder_name, resolve_builder
from fedsim.results import (
    CONFIG_FILE,
    MODEL_FILE,
    ROUND_COLUMNS,
    ROUNDS_FILE,
    Run,
    RunFolderError,
    RunWriter,
    claim_run_folder,
    default_out,
    load_run,
    read_table,
    resume_checkpoint,
    resume_state,
    versions,
)
from fedsim.strategies import STRATEGIES, Strategy, strategy_for
from fedsim.tracking import Trackers


def run(
    config: Config | None = None,
    *,
    engine: Engine | None = None,
    strategy: Strategy | str | None = None,
    model_builder: ModelBuilder | None = None,
    data: Dataset | None = None,
    progress: bool = True,
    **settings: Any,
) -> Run:
    """Run one experiment and return it loaded from its folder.

    `fedsim.run(devices=10, rounds=5)` or `fedsim.run(Config(...))`; keyword settings override the
    config. `engine` defaults to Ray (RayEngine(config.hosts, config.address)); pass LocalEngine() to
    run in-process. `model_builder` replaces the named model with your own Keras builder (it receives
    the Task). `data` runs on your own arrays (`fedsim.ArrayDataset(...)`) instead of a named data set.
    """
    started = time.perf_counter()
    if isinstance(strategy, str):  # fedsim.run(strategy="fedadam", server_lr=0.01): a name is a setting
        settings, strategy = {**settings, "strategy": strategy}, None
    if data is not None:
        settings = {**settings, "dataset": "arrays"}
    config = (config or Config()).replace(**settings) if settings else (config or Config())
    config = config.replace(partition=config.partition_spec)  # config.json records the partition that ran
    if config.dataset == "arrays" and data is None:
        raise ConfigError(
            "--dataset arrays is a data set built in Python: pass it as fedsim.run(data=ArrayDataset(...))"
        )
    recipe_data = data_recipe(config, data)
    recipe_data.check()  # a missing data set fails here, before any folder or Ray process exists
    # and a fleet it cannot make or hold (Ray would otherwise kill the preparation for memory)
    recipe_data.check_fleet(config.devices, config.min_samples, config.partition_spec == "natural")
    builder = model_builder or resolve_builder(config.model)
    model = f"artifact {config.artifact}" if config.artifact else builder_name(builder)
    if not config.artifact and (model in MODELS or _is_import_path(model)):
        config = config.replace(model=model)  # what config.json records is what ran
    strategy = strategy.bind(config) if strategy is not None else strategy_for(config)
    # a fleet file with a bad column or id fails here, before any folder or Ray process exists
    profiles = load_fleet(config.fleet, config.devices, config.seed) if config.fleet else None
    artifact: ArtifactRecipe | bytes = ArtifactRecipe(
        builder, None, optimizer_of(config), config.seed, config.checkpoint_format, strategy.variant
    )
    if config.artifact:
        artifact = _read_artifact(config.artifact)
    trackers = _trackers(config)
    out = claim_run_folder(config.out or default_out(config.name))
    config = config.replace(out=str(out))  # the folder it ran in, also when it was the default
    meta: dict[str, Any] = {
        "config": config.to_dict(),
        "versions": versions(),
        "strategy": type(strategy).__name__,
        "strategy_params": strategy.describe() if hasattr(strategy, "describe") else {},
        # what load_runs reports as the strategy: the --strategy name, or module:Class of one passed in
        "strategy_name": strategy_name(config, strategy),
        "model": model,
        "started": _now(),
    }
    writer = RunWriter(out, meta)

    def body() -> None:
        writer.track(trackers)
        _run(
            config,
            recipe_data,
            strategy,
            artifact,
            engine,
            writer,
            progress,
            started,
            check_artifact=bool(config.artifact),
            profiles=profiles,
        )

    _guarded(writer, body, new_run=True)
    return load_run(out)


def _trackers(config: Config) -> Trackers:
    """The experiment trackers the config asks for (--tensorboard, --mlflow); an MLflow URI that
    cannot be used fails here, before any folder or Ray process exists."""
    return Trackers(config.tensorboard, config.mlflow, config.mlflow_experiment or config.name)


def strategy_name(config: Config, strategy: Strategy) -> str:
    """The --strategy name if `strategy` is that strategy, else the strategy's module:Class."""
    if type(strategy) is STRATEGIES.get(config.strategy):
        return config.strategy
    return f"{type(strategy).__module__}:{type(strategy).__qualname__}"


def _resume_strategy(folder: Path, meta: dict[str, Any], config: Config, given: Strategy | None) -> Strategy:
    """The strategy that ran, rebuilt: by name, or a custom one passed again (or importable by its
    recorded module:Class). A run whose strategy cannot be rebuilt is refused rather than resumed
    with another rule."""
    name = meta.get("strategy_name", config.strategy)
    if given is not None:
        if strategy_name(config, given) != name:
            raise RunFolderError(f"--resume {folder}: the run used strategy {name}, not {strategy_name(config, given)}")
        return given.bind(config)
    if name in STRATEGIES:
        return strategy_for(config)
    import importlib

    module, _, cls = name.partition(":")
    try:
        made = getattr(importlib.import_module(module), cls)()
    except Exception as e:  # any failure to rebuild it means: the caller must pass it
        raise RunFolderError(
            f"--resume {folder}: the run used strategy {name}, which cannot be rebuilt here "
            f"({type(e).__name__}: {e}); pass it again: fedsim.resume(DIR, strategy=...)"
        ) from None
    return made.bind(config)


def data_recipe(config: Config, arrays: Dataset | None = None) -> DataRecipe:
    return DataRecipe(
        config.dataset, config.data_dir, config.seed, config.toy_samples, config.devices, config.data, arrays
    )


def optimizer_of(config: Config) -> Optimizer:
    return Optimizer(
        config.device_optimizer,
        config.lr,
        config.device_momentum,
        config.device_beta1,
        config.device_beta2,
        config.device_epsilon,
    )


def _read_artifact(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"--artifact {path}: {e.strerror}") from None


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
    data: Dataset | None = None,
    rounds: int | None = None,
) -> Run:
    """Continue an interrupted run in its own folder after its last committed round, or extend a
    finished one to `rounds` rounds.

    The run's saved settings and .tflite are used as they are; only where it runs (hosts, address)
    and how many rounds it has may change. The rounds table comes out identical to an uninterrupted
    run's of as many rounds (with --eval-every above 1, the old last round keeps its evaluation).
    """
    started = time.perf_counter()
    folder = Path(path)
    meta_file = folder / CONFIG_FILE
    if not meta_file.is_file():
        raise RunFolderError(f"--resume {folder}: not a fedsim run folder (no {CONFIG_FILE})")
    meta = json.loads(meta_file.read_text())
    changes = {k: v for k, v in (("hosts", hosts), ("address", address), ("rounds", rounds)) if v is not None}
    config = Config.from_dict(meta["config"]).replace(**changes)
    done = int(meta.get("rounds_completed", 0))
    if done >= config.rounds:
        if rounds is None:
            raise RunFolderError(
                f"--resume {folder}: all {config.rounds} rounds are already complete; extend it "
                f"with --rounds N (N > {done})"
            )
        raise RunFolderError(f"--resume {folder}: --rounds {rounds} is not more than the {done} rounds it has")
    if config.dataset == "arrays" and data is None:
        raise RunFolderError(
            f"--resume {folder}: this run trained on arrays built in Python; pass them again as "
            "fedsim.resume(DIR, data=ArrayDataset(...))"
        )
    recipe_data = data_recipe(config, data)
    recipe_data.check()
    if not (folder / MODEL_FILE).is_file():
        raise RunFolderError(f"--resume {folder}: the run stopped before its artifact was made; start it again")
    artifact = (folder / MODEL_FILE).read_bytes()
    finished = meta.get("status") == "completed"  # its resume/ folder is gone: global.ckpt is round `done`
    initial = resume_checkpoint(folder, done, finished) if done else None
    state = resume_state(folder, done, finished) if done else None
    strategy = _resume_strategy(folder, meta, config, strategy)
    sim_started = 0.0
    if done:  # elapsed_s (and the simulated clock) go on from the last committed round
        rounds = read_table(folder / ROUNDS_FILE, ROUND_COLUMNS)  # not the devices table: it can be large
        committed = rounds[rounds["round"] <= done]
        if len(committed):
            started -= float(committed["elapsed_s"].iloc[-1])
            if "sim_elapsed_s" in committed and not np.isnan(committed["sim_elapsed_s"].iloc[-1]):
                sim_started = float(committed["sim_elapsed_s"].iloc[-1])
    profiles = load_fleet(config.fleet, config.devices, config.seed) if config.fleet else None
    meta["config"] = config.to_dict()
    for stale in ("error", "finished"):
        meta.pop(stale, None)
    meta.setdefault("resumed", []).append({"after_round": done, "at": _now()})
    trackers = _trackers(config)
    writer = RunWriter(folder, meta, resume_from=done)

    def body() -> None:
        writer.track(trackers)
        _run(
            config,
            recipe_data,
            strategy,
            artifact,
            engine,
            writer,
            progress,
            started,
            initial,
            done + 1,
            state=state,
            profiles=profiles,
            sim_latency=meta.get("sim_latency_ms"),
            sim_started=sim_started,
        )

    _guarded(writer, body)
    return load_run(folder)


def _guarded(writer: RunWriter, body: Any, new_run: bool = False) -> None:
    """Run `body`, then record how the run ended in config.json (completed; interrupted by Ctrl-C;
    or failed and why).

    A new run that fails before its first round is committed leaves no folder behind, so the same
    command can simply be run again once the cause is fixed."""
    try:
        body()
    except BaseException as e:
        try:
            if isinstance(e, KeyboardInterrupt):  # stopped on purpose: resumable, not failed
                writer.write_meta(status="interrupted", finished=_now())
            else:
                writer.write_meta(status="failed", error=f"{type(e).__name__}: {e}", finished=_now())
        finally:
            writer.close()
            if new_run and not writer.meta.get("rounds_completed"):
                writer.discard()
        raise
    writer.write_meta(status="completed", finished=_now())
    writer.close()


def _run(
    config,
    data,
    strategy,
    artifact,
    engine,
    writer,
    progress,
    started,
    initial=None,
    start_round=1,
    check_artifact=False,
    state=None,
    profiles=None,
    sim_latency=None,
    sim_started=0.0,
) -> None:
    if engine is None:
        from fedsim.engine.ray import RayEngine

        # keep_warm: the next run in this process (a notebook's next cell) reuses Ray and the hosts
        engine = RayEngine(config.hosts, config.address, config.round_timeout, keep_warm=True)
    settings = HostSettings(config.local_epochs, config.batch_size, config.seed)
    setup = Setup(
        artifact,
        data,
        config.devices,
        settings,
        config.partition_spec,
        config.min_samples,
        config.device_test_fraction,
        check_artifact,
    )
    with engine:
        began = time.perf_counter()
        prepared = engine.start(setup)
        stages = {**getattr(engine, "startup_s", {}), "total": time.perf_counter() - began}
        if progress:  # what the wait before round 1 was spent on
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in stages.items() if k not in ("total", "warm"))
            print(
                f"fedsim: started in {stages['total']:.1f} s ({parts}{', warm hosts' if stages.get('warm') else ''})",
                file=sys.stderr,
                flush=True,
            )
        writer.write_model(prepared.artifact)
        if prepared.report is not None:
            writer.write_artifact_report(prepared.report)
        if prepared.label_counts is not None:
            writer.write_partition(prepared.label_counts, prepared.test_sizes)
        train_samples = int(prepared.dataset_info["train_samples"])
        writer.write_meta(
            hosts=engine.num_hosts,
            host_nodes=getattr(engine, "host_nodes", None),
            engine=type(engine).__name__,
            dataset={k: v for k, v in prepared.dataset_info.items() if k != "task"},
            task=prepared.dataset_info.get("task"),
            # > 1 when devices outnumber training samples: each sample is then held by up to this many devices
            sample_reuse=-(-config.devices // train_samples),
            startup_s=stages,  # seconds before round 1: Ray, data and conversion, hosts (warm: reused)
        )
        if initial is None:
            initial = engine.initial_checkpoint()
        # Devices that keep a test split of their own (--device-test-fraction, or a natural partition
        # whose data names each test sample's device) score every new global model on it.
        local_eval = prepared.test_sizes is not None and bool(np.any(prepared.test_sizes))
        task = prepared.dataset_info.get("task") or {}
        samples = prepared.label_counts.sum(axis=1) if prepared.label_counts is not None else None
        upload = int((prepared.report or {}).get("checkpoint_bytes", len(initial)))
        clock = None
        if profiles is not None:
            clock = sim_clock(config, profiles, sim_latency, prepared.report, samples, len(initial), upload)
            writer.write_fleet(profiles)
            writer.write_meta(sim_latency_ms=clock.latency_ms)
        Coordinator(
            config,
            engine,
            strategy,
            engine.evaluate,
            initial,
            writer,
            progress,
            started,
            local_eval,
            state,
            int(task.get("num_classes", 0)),
            clock,
            samples,
            upload,
            sim_started,
        ).run(start_round)


def sim_clock(
    config: Config,
    profiles: Any,
    latency: dict[str, float] | None,
    report: dict[str, Any] | None,
    samples: np.ndarray,
    down_bytes: int,
    up_bytes: int,
) -> Clock:
    """The run's simulated clock: the profiles, the latency table (pinned by --latency, recorded by an
    earlier part of this run, or measured at its start), and the round policy; a deadline no device
    could meet is refused here, before the first round."""
    if latency is None:
        latency = (
            read_latency(config.latency)
            if config.latency
            else {
                k: float(v)
                for k, v in (report or {}).get("latency_ms", {}).items()
                if k in ("restore", "train", "save")
            }
        )
    clock = Clock(
        profiles,
        latency,
        config.batch_size,
        config.local_epochs,
        config.seed,
        config.deadline,
        config.straggler,
        config.over_select,
    )
    if config.deadline is not None:
        fewest = clock.fewest_seconds(samples, down_bytes, up_bytes)
        if fewest > config.deadline:
            work = "one train step" if config.straggler == "partial" else "its round"
            raise FleetError(
                f"--deadline {config.deadline:g} s is shorter than any device could meet: the fastest "
                f"needs {fewest:.3g} simulated s for {work}"
            )
    return clock
