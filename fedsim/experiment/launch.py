"""One run on an engine: start it, record what the preparation made, build the run's context, clock and
coordinator, and run the rounds. `fedsim.experiment.simulation` checks everything it can before calling this."""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from fedsim.clock.clock import Clock, read_latency, reuse_latency
from fedsim.clock.profiles import FleetError
from fedsim.clock.settings import ClockSettings
from fedsim.core import seeded
from fedsim.core.context import RunContext
from fedsim.core.instructions import Instruction, refuse_unhonoured
from fedsim.core.task import Task
from fedsim.data import DataRecipe
from fedsim.data.settings import DataSettings
from fedsim.engine.base import Engine
from fedsim.engine.layout import Prepared, Setup
from fedsim.engine.settings import EngineSettings, HostSettings
from fedsim.experiment.config import Config, ConfigError
from fedsim.experiment.init_from import initial_checkpoint, source
from fedsim.loop.asyncloop import AsyncCoordinator
from fedsim.loop.coordinator import Coordinator, Resume
from fedsim.loop.rows import TEXT_DEVICE_COLUMNS, TEXT_ROUND_COLUMNS
from fedsim.loop.schedule import ScheduleSettings
from fedsim.loop.settings import RunSettings
from fedsim.model.builders import ArtifactRecipe
from fedsim.model.signatures import honours_of_report
from fedsim.pipeline import Pipeline
from fedsim.results import STATE_DIR, RunWriter
from fedsim.strategies.aggregate import PartialSum
from fedsim.strategies.base import Strategy


@dataclass
class RunPlan:
    """What a run is made of, all checked before any folder or Ray process exists."""

    config: Config
    data: DataRecipe
    strategy: Strategy
    pipeline: Pipeline
    artifact: ArtifactRecipe | bytes  # bytes: a resumed run's own .tflite, or --artifact
    check_artifact: bool = False  # an --artifact made elsewhere is checked against the data first
    profiles: pd.DataFrame | None = None  # the simulated clock's device profiles (--fleet)


@dataclass
class StartPoint:
    """Where the rounds begin: round 1 from the artifact's own weights, or after a committed round."""

    round_num: int = 1
    checkpoint: bytes | None = None  # the global model to start from (None: the artifact's initial weights)
    resume: Resume = field(default_factory=Resume)
    sim_latency: dict[str, float] | None = None  # the latency table an earlier part of the run used


def execute(
    plan: RunPlan, engine: Engine | None, writer: RunWriter, progress: bool, started: float, start: StartPoint
) -> None:
    config = plan.config
    if engine is None:
        from fedsim.engine.ray import RayEngine

        # keep_warm: the next run in this process (a notebook's next cell) reuses Ray and the hosts
        engine = RayEngine.of(config.section(EngineSettings), keep_warm=True)
    settings = HostSettings(config.local_epochs, config.batch_size, config.seed, config.state_cache_mb)
    split = dataclasses.replace(config.section(DataSettings), partition=config.partition_spec)
    setup = Setup(plan.artifact, plan.data, config.devices, settings, split, plan.check_artifact)
    with engine:
        began = time.perf_counter()
        if progress:  # the wait before round 1 is not silent
            print(
                f"fedsim: starting: the hosts, the {config.devices:,} devices' data, the model's artifact"
                f"{'' if isinstance(plan.artifact, bytes) else _made_by(plan.artifact)} ...",
                file=sys.stderr,
                flush=True,
            )
        if config.mode == "async":  # its loop's compiled draws and stale-update sums: loaded meanwhile
            seeded.warm_up(also=PartialSum.load_moved)
        prepared = engine.start(setup)
        stages = {**getattr(engine, "startup_s", {}), "total": time.perf_counter() - began}
        if progress:  # what the wait before round 1 was spent on
            shown = {k: v for k, v in stages.items() if k not in ("total", "warm") and (k != "conversion" or v)}
            parts = ", ".join(f"{k} {v:.1f} s" for k, v in shown.items())
            detail = ", ".join(p for p in (parts, "warm hosts" if stages.get("warm") else "") if p)
            print(
                f"fedsim: started in {stages['total']:.1f} s" + (f" ({detail})" if detail else ""),
                file=sys.stderr,
                flush=True,
            )
        refuse_unhonoured(_issuers(config, plan), honours_of_report(prepared.report or {}), _runtime(plan))
        initial = start.checkpoint if start.checkpoint is not None else engine.initial_checkpoint()
        run = run_context(config, prepared, len(initial), engine.num_hosts)
        if run.task.text:  # perplexity and top-3 accuracy, once the data says it is text
            writer.declare(list(TEXT_ROUND_COLUMNS), list(TEXT_DEVICE_COLUMNS))
        if start.checkpoint is None and config.init_from:  # (a resumed run goes on from its own model)
            initial = initial_checkpoint(config.init_from, initial, list(run.layout), plan.artifact)
            writer.write_meta(init_from=str(source(config.init_from).resolve()))
        if config.personal_eval_epochs and not run.local_eval:
            raise ConfigError(
                f"--personal-eval-epochs {config.personal_eval_epochs}: the devices of this data set have no "
                "test data of their own (give --device-test-fraction F)"
            )
        strategy = plan.strategy.bind(run)
        plan.pipeline.bind(run)
        _record_prepared(writer, engine, prepared, stages, config, strategy)
        writer.write_meta(stages=plan.pipeline.describe())  # what each stage resolved (DP's z, delta, ...)
        clock = None
        if plan.profiles is not None:
            clock = sim_clock(
                config,
                plan.profiles,
                start.sim_latency,
                prepared.report,
                run,
                len(initial),
                plan.pipeline.upload_bytes(run.upload_bytes, run.params),
                prepared.artifact,
                strategy.device_work(config.local_epochs),
            )
            writer.write_fleet(plan.profiles)
            writer.write_meta(sim_latency_ms=clock.latency_ms, sim_latency_source=clock.latency_source)
        loop = (
            partial(AsyncCoordinator, schedule=config.section(ScheduleSettings))
            if config.mode == "async"
            else Coordinator
        )
        coordinator = loop(
            config.section(RunSettings),
            run,
            engine,
            strategy,
            plan.pipeline,
            initial,
            writer,
            clock,
            start.resume,
            progress,
            started,
            writer.path / STATE_DIR,
        )
        # hosts that could not reach the run folder: their devices' state went through the engine
        writer.write_meta(state_relay_hosts=sorted(getattr(engine, "relay", set())))
        coordinator.run(start.round_num)


def _issuers(config: Config, plan: RunPlan) -> list[tuple[str, tuple[type[Instruction], ...]]]:
    """Who may give devices instructions in this run (named by their flags), and which."""
    out = [(f"--strategy {config.strategy}", plan.strategy.instructions)]
    return out + [(f"the {s.name} stage", s.instructions) for s in plan.pipeline.stages]


def _made_by(recipe: ArtifactRecipe) -> str:
    return " (exported with torch)" if recipe.runtime == "executorch" else " (converted with TensorFlow)"


def _runtime(plan: RunPlan) -> str:
    return "the --artifact given" if plan.check_artifact else "this run's artifact"


def run_context(config: Config, prepared: Prepared, initial_bytes: int, hosts: int) -> RunContext:
    """The typed facts of the prepared run that strategies and stages bind to."""
    task = Task.from_dict(prepared.dataset_info["task"])
    counts = prepared.label_counts
    samples = counts.sum(axis=1) if counts is not None else np.zeros(config.devices, np.int64)
    report = prepared.report or {}
    params = int(report.get("parameters") or 0)
    return RunContext(
        task=task,
        devices=config.devices,
        per_round=config.devices_per_round,
        samples=samples,
        batch_size=config.batch_size,
        local_epochs=config.local_epochs,
        lr=config.lr,
        byzantine=config.byzantine,
        params=params,
        upload_bytes=int(report.get("checkpoint_bytes", initial_bytes)),
        seed=config.seed,
        rounds=config.rounds,
        sampling=config.sampling,
        # devices that keep a test split of their own (--device-test-fraction, or a natural partition whose
        # data names each test sample's device) score every new global model on it
        local_eval=prepared.test_sizes is not None and bool(np.any(prepared.test_sizes)),
        layout=tuple((str(name), tuple(int(n) for n in shape)) for name, shape in report.get("layout") or ()),
    )


def _record_prepared(
    writer: RunWriter, engine: Engine, prepared: Prepared, stages: dict[str, Any], config: Config, strategy: Strategy
) -> None:
    writer.write_model(prepared.artifact)
    if prepared.report is not None:  # a resume keeps the report (and latencies) the run began with
        writer.write_artifact_report(prepared.report, replace=False)
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
        strategy_params=strategy.describe(),  # with what the run filled in (Krum's f, q-FedAvg's L)
    )


def sim_clock(
    config: Config,
    profiles: Any,
    latency: dict[str, float] | None,
    report: dict[str, Any] | None,
    run: RunContext,
    down_bytes: int,
    up_bytes: int,
    artifact: bytes = b"",
    work: tuple[int, int] = (1, 1),
) -> Clock:
    """The run's simulated clock: the profiles, the latency table (pinned by --latency, recorded by an
    earlier part of this run, or measured at its start), and the round policy; a deadline no device
    could meet is refused here, before the first round."""
    source = "recorded by this run's first part"  # a resume: the table its clock started with
    if latency is None and config.latency:
        latency, source = read_latency(config.latency), f"pinned by --latency {config.latency}"
    elif latency is None:
        measured = (report or {}).get("latency_ms", {})
        table = {k: float(v) for k, v in measured.items() if k in ("restore", "train", "save")}
        latency, source = reuse_latency(artifact, table, str((report or {}).get("identity", "")))
    epochs, passes = work  # what a device's round runs on its phone (the strategy's device_work)
    clock = config.section(ClockSettings).clock(profiles, latency, config.batch_size, epochs, config.seed)
    clock.passes = passes
    clock.latency_source = source
    if config.deadline is not None:
        fewest = clock.fewest_seconds(run.samples, down_bytes, up_bytes)
        if fewest > config.deadline:
            needed = "one train step" if config.straggler == "partial" else "its round"
            raise FleetError(
                f"--deadline {config.deadline:g} s is shorter than any device could meet: the fastest "
                f"needs {fewest:.3g} simulated s for {needed}"
            )
    return clock
