"""What both round loops share (FedScale's asynchronous aggregator subclasses its synchronous one the
same way): the run's model and server state, the devices' plans and their hosts' work, the reduce
-> server stages -> strategy's apply of an aggregate, and a round's record (evaluation, rows,
commit). `Coordinator` (fedsim.loop.coordinator) runs synchronous rounds on it and `AsyncCoordinator`
(fedsim.loop.asyncloop) FedBuff's server steps; neither repeats any of this.

Knows the engine only through its interface, the strategy only through `plan` / `apply`, and the
update pipeline only through its hooks: no strategy, attack or stage by name. No TensorFlow, no Ray.
"""

from __future__ import annotations

import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from fedsim.checkpoint import (
    WeightSpec,
    check_weights,
    flatten,
    read_checkpoint,
    scratch_dir,
    spec_of,
    unflatten,
    write_checkpoint,
)
from fedsim.clock.clock import Clock
from fedsim.core.context import RunContext
from fedsim.core.instructions import Instruction
from fedsim.core.segments import SegmentWriter, segment_name
from fedsim.engine.base import Engine, StateWritten
from fedsim.loop import personal
from fedsim.loop.devicestate import PREFIX as STATE_PREFIX
from fedsim.loop.devicestate import StateFiles, StateIndex
from fedsim.loop.rows import NAN, RoundTimes, initial_row, round_row, text_columns
from fedsim.loop.settings import RunSettings, parse_commit_every
from fedsim.pipeline import Pipeline
from fedsim.pipeline.base import HostRound, ServerContext, SimCost
from fedsim.strategies.base import Aggregate, DevicePlan, State, Strategy, Weights


class RoundFailedError(RuntimeError):
    """Too few devices reported in a round, twice: the run stops; completed rounds stay on disk."""


class Recorder(Protocol):
    def record_round(
        self,
        round_row: dict[str, Any],
        device_rows: list[dict[str, Any]],
        global_checkpoint: bytes,
        state: State | None = None,
        files: StateFiles | None = None,
    ) -> None: ...

    def hold_round(self, round_row: dict[str, Any], device_rows: list[dict[str, Any]]) -> None: ...


@dataclass(frozen=True)
class Resume:
    """Where a continued run picks up: the server state of its last committed round, and the
    simulated seconds it had reached (--fleet)."""

    state: State | None = None
    sim_elapsed_s: float = 0.0


@dataclass
class RoundRecord:
    """The latest round's rows (the tables on disk hold them all)."""

    round_row: dict[str, Any]
    device_rows: list[dict[str, Any]]


@dataclass(frozen=True)
class Stamps:
    """perf_counter stamps of a round so far: its start, the hosts' answer, the aggregate applied."""

    start: float
    hosts_done: float
    aggregated: float


class RoundCore(ABC):
    state_prefixes: tuple[str, ...] = ("pipeline.", STATE_PREFIX)  # saved-state keys that are not the strategy's
    # --commit-every when it is not given: once a second, for both loops (experiments/bench_overhead.py
    # rows mlp-1000-per10-h2 and -c1: committing every 20 ms round cost it ~30%; bench_stages
    # async-skewed-c1: every FedBuff step a sixth). Rounds of a second or more still commit each.
    default_commit = "1s"

    def __init__(
        self,
        settings: RunSettings,
        run: RunContext,
        engine: Engine,
        strategy: Strategy,
        pipeline: Pipeline,
        initial_checkpoint: bytes,
        recorder: Recorder | None = None,
        clock: Clock | None = None,
        resume: Resume = Resume(),
        progress: bool = True,
        started: float | None = None,
        state_folder: Path | None = None,
    ) -> None:
        self.settings = settings
        self.run_context = run
        self.engine = engine
        self.strategy = strategy
        self.pipeline = pipeline
        self.recorder = recorder
        self.clock = clock
        self.progress = progress
        # the perf_counter time the run began (elapsed_s counts from it; a resume moves it back)
        self.started = time.perf_counter() if started is None else started
        self.sim_elapsed = resume.sim_elapsed_s
        self.commit_rounds, self.commit_seconds = parse_commit_every(settings.commit_every or self.default_commit)
        self.last_commit = time.perf_counter()
        self.scratch = scratch_dir("fedsim-coordinator-")
        # where devices keep what they keep across rounds (the run folder's device_state/; a run that
        # records nothing keeps it in the scratch folder): the hosts read and write it there
        self.states = StateIndex.for_run(state_folder or self.scratch / "device_state", run)
        engine.use_state_folder(self.states.folder)
        self.global_weights: Weights = read_checkpoint(initial_checkpoint, self.scratch)
        self.spec: WeightSpec = spec_of(self.global_weights)
        # Every global checkpoint in fedsim's own layout (one block per entry, which the devices'
        # Restore ops read more cheaply), the first one too: same weights, other bytes.
        self.global_checkpoint = write_checkpoint(self.global_weights, self.scratch)
        self.flat = flatten(self.global_weights, self.spec)
        self.accumulate = pipeline.accumulate(strategy)
        # the strategy's and the stages' server state: from the last committed round on resume, else fresh
        self.state: State = strategy.init(self.flat)
        self.resumed_state = resume.state
        if resume.state is not None:
            saved = {k: v for k, v in resume.state.items() if not k.startswith(self.state_prefixes)}
            self.state = strategy.resume_state(saved, self.flat)
            pipeline.restore(resume.state)
            self.states.restore(resume.state)
            self._seed_states(pipeline.seed_states())
        self.last: RoundRecord | None = None

    @abstractmethod
    def run_round(self, round_num: int) -> RoundRecord:
        """Run until round (or server step) `round_num` is applied and recorded."""

    def evaluates(self, round_num: int) -> bool:
        """Whether the global model is evaluated after `round_num` (--eval-every; always after the last)."""
        return round_num % self.settings.eval_every == 0 or round_num == self.settings.rounds

    def run(self, start_round: int = 1) -> RoundRecord | None:
        """Run rounds start_round..rounds; the last round's rows."""
        rounds = self.settings.rounds
        bar = tqdm(total=rounds, initial=start_round - 1, desc="fedsim", unit="round", disable=not self.progress)
        try:
            if self.settings.eval_initial and start_round == 1:
                row = self.record_initial()
                bar.set_postfix(acc=f"{row['test_accuracy']:.4f}", loss=f"{row['test_loss']:.3f}")
            for round_num in range(start_round, rounds + 1):
                self.last = self.run_round(round_num)
                row = self.last.round_row
                if not np.isnan(row["test_accuracy"]):  # rounds without evaluation keep the last figures
                    bar.set_postfix(
                        acc=f"{row['test_accuracy']:.4f}", loss=f"{row['test_loss']:.3f}", s=f"{row['wall_s']:.2f}"
                    )
                bar.update(1)
        finally:
            bar.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
        return self.last

    def record_initial(self) -> dict[str, Any]:
        """--eval-initial: the initial model on the test set, recorded as round 0 (no device ran; the
        simulated clock at 0)."""
        start = time.perf_counter()
        evaluation = self.engine.evaluate(self.global_checkpoint, [])
        row = initial_row(evaluation, time.perf_counter() - start)
        if self.run_context.task.text:
            row.update(text_columns(evaluation, []))
        evaluated: list[dict[str, Any]] = []  # personalised evaluation of the initial model (--init-from)
        row.update(self._personal(0, evaluated))
        sim = 0.0 if self.clock is not None else NAN
        row.update({"sim_round_s": sim, "sim_elapsed_s": sim, "elapsed_s": time.perf_counter() - self.started})
        self._record(0, row, evaluated)
        return row

    # ---- a round's work ---------------------------------------------------------------------------
    def plan(self, round_num: int, device_ids: Sequence[int]) -> tuple[dict[int, DevicePlan], dict[int, float]]:
        """The round's per-device instructions (the strategy's, then each stage's) and coefficients."""
        plans = dict(self.strategy.plan(round_num, device_ids, self.state))
        self.pipeline.plan(round_num, device_ids, plans)
        samples = self.run_context.samples[np.asarray(device_ids, np.int64)]
        coefficients = self.pipeline.coefficients(self.strategy.weights(samples))
        return plans, dict(zip((int(d) for d in device_ids), coefficients.tolist()))

    def work(
        self,
        key: int,
        device_ids: Sequence[int],
        plans: dict[int, DevicePlan],
        coefficients: dict[int, float],
        accumulate: str,
    ) -> HostRound:
        """What the hosts need to run `device_ids` under round key `key`: the devices' plans and
        coefficients, the upload stages, and where each device's state is."""
        return HostRound(
            key,
            dict(self.spec),
            self.pipeline.host_stages(),
            accumulate,
            coefficients,
            plans,
            self.settings.seed,
            self.pipeline.modulus(),
            self.states.locate(device_ids),
        )

    def apply(self, aggregate: Aggregate, ctx: ServerContext) -> bool:
        """The round's reduced updates through the server stages and the strategy's apply, into the
        new global model; False when a stage lost them (a secure sum with too few to unmask)."""
        out = self.pipeline.server(aggregate, ctx)
        if out is None:
            return False
        flat, state = self.strategy.apply(self.flat, out, self.state)
        flat = self.pipeline.settle(np.asarray(flat, dtype=np.float32), self.flat)
        self._set_global(np.asarray(flat, dtype=np.float32), state)
        return True

    def finish(
        self,
        round_num: int,
        device_rows: list[dict[str, Any]],
        scored: Sequence[int],
        selected: int,
        stamps: Stamps,
        sent: int,
        plans: dict[int, DevicePlan],
        cost: SimCost,
        columns: dict[str, float],
    ) -> RoundRecord:
        """Evaluate (every --eval-every; `scored`: the devices that also score the new model on their
        own test split), make the round's row (`columns`: the loop's own, its clock's among them)
        and commit the round."""
        evaluation = None
        if self.evaluates(round_num):
            evaluation = self.engine.evaluate(self.global_checkpoint, scored if self.run_context.local_eval else [])
        for r in device_rows:
            r["test_accuracy"] = evaluation.device_accuracy.get(r["device_id"], NAN) if evaluation else NAN
        mine = self._personal(round_num, device_rows) if evaluation is not None else {}
        times = RoundTimes(stamps.start, stamps.hosts_done, stamps.aggregated, time.perf_counter())
        row = round_row(round_num, device_rows, evaluation, selected, times, sent, plans, cost)
        row.update(self.pipeline.round_metrics())
        row.update(columns)
        row.update(mine)
        if self.run_context.task.text:
            row.update(text_columns(evaluation, device_rows))
        row["elapsed_s"] = time.perf_counter() - self.started  # (differences between rounds include recording)
        self._record(round_num, row, device_rows)
        return RoundRecord(row, device_rows)

    def _record(self, round_num: int, row: dict[str, Any], device_rows: list[dict[str, Any]]) -> None:
        """Hand a round to the recorder: committed with the model, the server state and the device
        state index every --commit-every (round 0 and the last round always), else its rows held for
        the next commit. A kill loses the held rounds only; a resume runs them again from the last
        commit, with the same results (the loop's schedule and draws are seeded, never timed)."""
        if self.recorder is None:
            return
        now = time.perf_counter()
        every = self.commit_rounds
        if (
            round_num in (0, self.settings.rounds)
            or (every and round_num % every == 0)
            or (not every and now - self.last_commit >= self.commit_seconds)
        ):
            self.recorder.record_round(row, device_rows, self.global_checkpoint, *self._commit(round_num))
            self.last_commit = now
        else:
            self.recorder.hold_round(row, device_rows)

    @property
    def maker(self) -> Instruction | None:
        """What makes a device's personal model (a stage's or the strategy's), if the run keeps any."""
        return self.pipeline.personaliser() or self.strategy.personaliser()

    def _personal(self, round_num: int, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Personalised evaluation (fedsim.loop.personal), when the run asks for it and devices have a
        test split of their own: its scores into the rows, its columns for the round's row."""
        run, settings = self.run_context, self.settings
        if not run.local_eval or not personal.wanted(settings.personal_eval_epochs, self.maker):
            return {}
        ids = personal.devices(run.devices, settings.personal_eval_devices, settings.seed, round_num)
        spec = personal.evaluation(
            ids, settings.personal_eval_epochs, self.maker, round_num, dict(self.spec), self.states.locate(ids)
        )
        scores = self.engine.evaluate_personal(self.global_checkpoint, spec)
        return personal.record(rows, scores, round_num, run.samples)

    # ---- the model and what is saved with it -------------------------------------------------------
    def _broadcast(self) -> bytes:
        """The checkpoint the round's devices restore: the global model, or what a stage makes of it."""
        sent = self.pipeline.broadcast(self.flat)
        if sent is self.flat:
            return self.global_checkpoint
        return write_checkpoint(unflatten(np.asarray(sent, np.float32), self.spec), self.scratch)

    def _set_global(self, flat: np.ndarray, state: State) -> None:
        weights = unflatten(flat, self.spec)
        check_weights(weights, self.spec, flat)  # a strategy bug must not poison the model
        self.flat, self.state = flat, state
        self.global_weights = weights
        self.global_checkpoint = write_checkpoint(weights, self.scratch)

    def _saved_state(self) -> State:
        return {**self.state, **self.pipeline.state()}

    def _commit(self, round_num: int) -> tuple[State, StateFiles]:
        """What a committed round saves (the strategy's and stages' state, the device state index) and
        what its commit does in the device state folder."""
        index, files = self.states.commit(final=round_num == self.settings.rounds)
        return {**self._saved_state(), **index}, files

    def _seed_states(self, seeds: dict[int, dict[str, np.ndarray]]) -> None:
        """Device state a stage held itself (an earlier fedsim's run folder), written once as the
        devices' own."""
        if seeds:
            writer = SegmentWriter(self.states.folder / segment_name(0, 999))
            for d in sorted(seeds):
                writer.add(d, seeds[d])
            ids = writer.close()
            self.states.written([StateWritten(writer.path.name, tuple(ids))])
            self.states.absorb(ids)
