"""Wiring for one run, shared by the CLI and notebooks: config -> data -> artifact -> engine -> loop -> run folder.

Everything that can be wrong with the input (settings, data, run folder) is checked before Ray starts.
"""

from __future__ import annotations

import datetime as dt
import errno
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.clock.profiles import load_fleet
from fedsim.core.instructions import Instruction, columns_of
from fedsim.data import DataRecipe, Dataset
from fedsim.data.settings import DataSettings
from fedsim.engine.base import Engine
from fedsim.experiment.config import Config, ConfigError, config_fields
from fedsim.experiment.launch import RunPlan, StartPoint, execute
from fedsim.loop import asyncloop, personal, schedule
from fedsim.loop.coordinator import Resume
from fedsim.model.builders import MODELS, ArtifactRecipe, ModelBuilder, builder_name, resolve_builder
from fedsim.model.pte import check_recipe
from fedsim.model.settings import DeviceSettings, is_import_path
from fedsim.model.signatures import capabilities, variant_of
from fedsim.pipeline import Pipeline, StopRun
from fedsim.report.tracking import Trackers, TrackingSettings
from fedsim.results import (
    CONFIG_FILE,
    ROUND_COLUMNS,
    ROUNDS_FILE,
    Run,
    RunFolderError,
    RunWriter,
    claim_run_folder,
    default_out,
    load_run,
    model_path,
    read_table,
    versions,
)
from fedsim.results.folder import release_claim, remove_run_files, take_claim
from fedsim.results.migrate import flat_config
from fedsim.results.reader import read_meta
from fedsim.results.recovery import committed_model, committed_rounds, stage_finished_model
from fedsim.strategies import STRATEGIES, Strategy


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
    the Task; on runtime="executorch", a builder of a torch.nn.Module). `data` runs on your own arrays
    (`fedsim.ArrayDataset(...)`) instead of a named data set.
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
    if not config.artifact and (model in MODELS or is_import_path(model)):
        config = config.replace(model=model)  # what config.json records is what ran
    chosen = strategy if strategy is not None else config.make_strategy()
    pipeline = Pipeline.build(config.stage_settings, config.seed, chosen)
    pipeline.check(chosen)
    pipeline.check_fleet(config.devices)
    chosen.check_cohort(config.devices, config.devices_per_round, config.byzantine)
    if config.mode == "async":
        schedule.check(chosen, pipeline)
    # a fleet file with a bad column or id fails here, before any folder or Ray process exists
    profiles = load_fleet(config.fleet, config.devices, config.seed) if config.fleet else None
    recipe = ArtifactRecipe(
        builder=builder,
        optimizer=config.section(DeviceSettings).optimizer(),
        seed=config.seed,
        checkpoint_format=config.checkpoint_format,
        variant=artifact_variant(chosen, pipeline),  # the data's task is filled in where the data is loaded
        runtime=config.runtime,
    )
    artifact: ArtifactRecipe | bytes = config.section(DeviceSettings).made_elsewhere() or recipe
    check_recipe(artifact)  # a missing runtime, and what its program could not honour, said before Ray starts
    trackers = _trackers(config)
    config = config.replace(name=config.run_name)  # config.json records the name the run went under
    out = claim_run_folder(config.out or default_out(config.run_name), free_name=not config.out)
    try:  # the folder is this run's until it returns or fails
        config = config.replace(out=str(out))  # the folder it ran in, also when it was the default
        meta: dict[str, Any] = {
            "config": config.to_dict(),
            "versions": versions(),
            "strategy": type(chosen).__name__,
            "strategy_params": chosen.describe(),
            # what load_runs reports as the strategy: the --strategy name, or module:Class of one passed in
            "strategy_name": strategy_name(config, chosen),
            "pipeline": pipeline.names(),
            "model": model,
            "started": _now(),
        }
        plan = RunPlan(config, recipe_data, chosen, pipeline, artifact, bool(config.artifact), profiles)
        rounds, devices = _columns(config, pipeline, chosen)
        writer = RunWriter(out, meta, round_columns=rounds, device_columns=devices)
        _guarded(writer, trackers, lambda: execute(plan, engine, writer, progress, started, StartPoint()), new_run=True)
        return load_run(out)
    finally:
        release_claim(out)


def instruction_kinds(strategy: Strategy, pipeline: Pipeline) -> list[type[Instruction]]:
    """Every kind of instruction the run's strategy and stages may give its devices."""
    return [*strategy.instructions, *(k for s in pipeline.stages for k in s.instructions)]


def artifact_variant(strategy: Strategy, pipeline: Pipeline) -> str | None:
    """The artifact variant that honours what the run's instructions need (and a strategy's own
    `variant`, for strategies written before instructions)."""
    needs = {n for kind in instruction_kinds(strategy, pipeline) for n in kind.needs}
    return variant_of(needs | capabilities(strategy.variant))


def _columns(config: Config, pipeline: Pipeline, strategy: Strategy) -> tuple[list[str], list[str]]:
    """The tables' columns beyond the standard ones (rounds, devices): the stages', what the
    instructions the strategy and stages give record, and the asynchronous schedule's."""
    rounds, devices = pipeline.columns(), pipeline.device_columns() + columns_of(instruction_kinds(strategy, pipeline))
    maker = pipeline.personaliser() or strategy.personaliser()
    if personal.wanted(config.personal_eval_epochs, maker):
        rounds += list(personal.ROUND_COLUMNS)
        devices += list(personal.DEVICE_COLUMNS)
    if config.mode == "async":
        rounds += list(asyncloop.ROUND_COLUMNS)
        devices += list(asyncloop.DEVICE_COLUMNS)
    return rounds, devices


def _trackers(config: Config) -> Trackers:
    """The experiment trackers the config asks for (--tensorboard, --mlflow); an MLflow URI that
    cannot be used fails here, before any folder or Ray process exists."""
    return Trackers.of(config.section(TrackingSettings), config.run_name)


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
        return given
    if name in STRATEGIES:
        return config.make_strategy()
    module, _, cls = name.partition(":")
    try:
        made: Strategy = getattr(importlib.import_module(module), cls)()
    except Exception as e:  # any failure to rebuild it means: the caller must pass it
        raise RunFolderError(
            f"--resume {folder}: the run used strategy {name}, which cannot be rebuilt here "
            f"({type(e).__name__}: {e}); pass it again: fedsim.resume(DIR, strategy=...)"
        ) from None
    return made


def data_recipe(config: Config, arrays: Dataset | None = None) -> DataRecipe:
    return config.section(DataSettings).recipe(config.seed, config.devices, arrays)


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def saved_config(meta: dict[str, Any], **changes: Any) -> Config:
    """A run folder's settings, with the strategy's hyperparameters as they ran (config.json keeps
    only those given; the strategy's defaults of the fedsim that ran are in strategy_params)."""
    config = Config.from_dict(flat_config(meta["config"]))
    ran = {k: v for k, v in (meta.get("strategy_params") or {}).items() if k != "name" and v is not None}
    if config.strategy in STRATEGIES and ran and meta.get("strategy_name", config.strategy) == config.strategy:
        changes = {**{k: v for k, v in ran.items() if k in STRATEGIES[config.strategy].param_names()}, **changes}
    return config.replace(**changes) if changes else config


def resume(
    path: str | os.PathLike[str],
    *,
    engine: Engine | None = None,
    strategy: Strategy | None = None,
    progress: bool = True,
    data: Dataset | None = None,
    **changes: Any,
) -> Run:
    """Continue an interrupted run in its own folder after its last committed round, or extend a
    finished one (`rounds=N`; or one stopped by its privacy budget, given a larger `dp_epsilon_budget`).

    The run's saved settings and .tflite are used as they are; only the settings declared resumable
    (where it runs: hosts, address; how long: rounds; a privacy budget) may change. The rounds table
    comes out identical to an uninterrupted run's of as many rounds (with --eval-every above 1, the old
    last round keeps its evaluation).
    """
    started = time.perf_counter()
    fields = config_fields()
    fixed = sorted(k for k in changes if k not in fields or not fields[k].resumable)
    if fixed:
        may = ", ".join(k for k, f in fields.items() if f.resumable)
        raise ConfigError(f"--resume uses the run's own settings; {', '.join(fixed)} cannot change (only {may} may)")
    folder = Path(path)
    try:
        meta = read_meta(folder)
    except FileNotFoundError:
        raise RunFolderError(f"--resume {folder}: not a fedsim run folder (no {CONFIG_FILE})") from None
    rounds = changes.get("rounds")
    changes = {k: v for k, v in changes.items() if v is not None}
    config = saved_config(meta, **changes)
    take_claim(folder)  # one process at a time continues a run; released however this ends
    try:
        done = committed_rounds(folder, meta)  # its table parts checked (a damaged last round is cut back)
        if done == 0:  # nothing to continue: the run starts over in its folder, with its saved settings
            print(f"fedsim: {folder}: no round was completed; starting the run over in it", file=sys.stderr, flush=True)
            remove_run_files(folder)
            release_claim(folder)
            return run(config, engine=engine, strategy=strategy, progress=progress, data=data, out=str(folder))
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
        if (model := model_path(folder)) is None:
            raise RunFolderError(f"--resume {folder}: the run stopped before its artifact was made; start it again")
        artifact = model.read_bytes()
        check_recipe(artifact)
        if meta.get("status") == "completed":  # its model is global.ckpt only: staged as round `done`'s first
            stage_finished_model(folder, done)
        start = StartPoint(done + 1, sim_latency=meta.get("sim_latency_ms"))
        checkpoint, state = committed_model(folder, done)  # checked before anything is written
        if done:  # from the last committed round: its model, server state and clocks
            start.checkpoint = checkpoint
            table = read_table(folder / ROUNDS_FILE, ROUND_COLUMNS)  # not the devices table: it can be large
            committed = table[table["round"] <= done]
            sim = 0.0
            if len(committed):
                started -= float(committed["elapsed_s"].iloc[-1])
                if "sim_elapsed_s" in committed and not np.isnan(committed["sim_elapsed_s"].iloc[-1]):
                    sim = float(committed["sim_elapsed_s"].iloc[-1])
            start.resume = Resume(state, sim)
        chosen = _resume_strategy(folder, meta, config, strategy)
        pipeline = Pipeline.build(config.stage_settings, config.seed, chosen)
        profiles = load_fleet(config.fleet, config.devices, config.seed) if config.fleet else None
        meta["config"] = config.to_dict()
        for stale in ("error", "finished", "stopped"):
            meta.pop(stale, None)
        meta.setdefault("resumed", []).append({"after_round": done, "at": _now()})
        trackers = _trackers(config)
        round_columns, device_columns = _columns(config, pipeline, chosen)
        writer = RunWriter(folder, meta, resume_from=done, round_columns=round_columns, device_columns=device_columns)
        plan = RunPlan(config, recipe_data, chosen, pipeline, artifact, False, profiles)
        _guarded(writer, trackers, lambda: execute(plan, engine, writer, progress, started, start))
        return load_run(folder)
    finally:
        release_claim(folder)


def _guarded(writer: RunWriter, trackers: Trackers, body: Callable[[], None], new_run: bool = False) -> None:
    """Run `body`, then record how the run ended in config.json (completed; interrupted by Ctrl-C;
    or failed and why).

    A new run that fails before its first round is committed leaves no folder behind, so the same
    command can simply be run again once the cause is fixed."""
    try:
        writer.track(trackers)
        body()
    except StopRun as e:  # a stage ended the run on purpose (its budget spent): resumable, not failed
        writer.write_meta(status=e.status, stopped=str(e), finished=_now())
        writer.close()
        return
    except BaseException as e:
        try:
            writer.settle()
        except OSError:
            pass
        try:
            if isinstance(e, KeyboardInterrupt):  # stopped on purpose: resumable, not failed
                writer.write_meta(status="interrupted", finished=_now())
            else:
                writer.write_meta(status="failed", error=f"{type(e).__name__}: {e}", finished=_now())
        except OSError:  # the disk that failed the run may refuse this too; the committed rounds stand
            pass
        finally:
            try:
                writer.close()
            except OSError:
                pass
            if new_run and not writer.meta.get("rounds_completed"):
                writer.discard()
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            done = int(writer.meta.get("rounds_completed") or 0)
            kept = (
                f"rounds 1-{done} are saved; free space and continue with fedsim run --resume {writer.path}"
                if done
                else "no round was completed; free space and run the same command again"
            )
            raise RunFolderError(f"no space left on the device holding {writer.path}; {kept}") from e
        raise
    writer.write_meta(status="completed", finished=_now())
    writer.close()
