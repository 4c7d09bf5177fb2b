"""The round loop: select -> plan -> run on devices -> reduce -> server stages -> apply -> evaluate -> record.

Knows the engine only through its interface, the strategy only through `plan` / `apply`, and the
update pipeline only through its hooks (fedsim.pipeline): no strategy, attack or stage by name. The
concrete engine and the recorder are passed in. No TensorFlow and no Ray here.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
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
from fedsim.clock.clock import Clock, SimOutcome
from fedsim.core import seeded
from fedsim.core.context import RunContext
from fedsim.engine.base import DeviceReport, Engine, RoundResult
from fedsim.experiment.config import Config, RunSettings
from fedsim.loop.rows import NAN, RoundTimes, device_row, initial_row, round_row
from fedsim.pipeline import Pipeline
from fedsim.pipeline.base import HostRound, ServerContext
from fedsim.strategies.base import DevicePlan, State, Strategy, Weights, reduce_partials


class RoundFailedError(RuntimeError):
    """Too few devices reported in a round, twice: the run stops; completed rounds stay on disk."""


class Recorder(Protocol):
    def record_round(
        self,
        round_row: dict[str, Any],
        device_rows: list[dict[str, Any]],
        global_checkpoint: bytes,
        state: State | None = None,
    ) -> None: ...


def select_devices(
    num_devices: int,
    per_round: int,
    seed: int,
    round_num: int,
    among: np.ndarray | None = None,
    poisson: bool = False,
    compiled: bool = False,
) -> list[int]:
    """The seeded choice of devices for a round; all of them when per_round covers them. `among`:
    the ids to choose from (the simulated clock's available devices), else every device. `poisson`:
    each device joins independently with probability per_round / devices (Poisson sampling), so the
    round's size varies. `compiled`: numpy's draw compiled (fedsim.core.seeded), the same choice."""
    pool = np.arange(num_devices) if among is None else np.asarray(among)
    if poisson:
        rng = np.random.default_rng([seed, round_num, 0x9015])
        return [int(d) for d in pool[rng.random(len(pool)) < per_round / num_devices]]
    if per_round >= len(pool):
        return [int(d) for d in pool]
    picked = seeded.choice((seed, round_num, 0x5E1EC7), len(pool), per_round, compiled)
    return sorted(pool[picked].tolist())


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


class Coordinator:
    state_prefixes: tuple[str, ...] = ("pipeline.",)  # saved-state keys that are not the strategy's

    def __init__(
        self,
        config: Config,
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
    ) -> None:
        self.settings = config.section(RunSettings)
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
        self.scratch = scratch_dir("fedsim-coordinator-")
        self.global_weights: Weights = read_checkpoint(initial_checkpoint, self.scratch)
        self.spec: WeightSpec = spec_of(self.global_weights)
        # Every global checkpoint in fedsim's own layout (one block per entry, which the devices'
        # Restore ops read more cheaply), the first one too: same weights, other bytes.
        self.global_checkpoint = write_checkpoint(self.global_weights, self.scratch)
        self.flat = flatten(self.global_weights, self.spec)
        self.accumulate = pipeline.accumulate(strategy)
        self.poisson = run.sampling == "poisson"  # each device joins a round with probability per_round / devices
        # the strategy's and the stages' server state: from the last committed round on resume, else fresh
        self.state: State = strategy.init(self.flat)
        self.resumed_state = resume.state
        if resume.state is not None:
            saved = {k: v for k, v in resume.state.items() if not k.startswith(self.state_prefixes)}
            self.state = strategy.resume_state(saved, self.flat)
            pipeline.restore(resume.state)
        self.last: RoundRecord | None = None

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
        row.update(self._clocks(0.0 if self.clock is not None else NAN))
        if self.recorder is not None:
            self.recorder.record_round(row, [], self.global_checkpoint, self._saved_state())
        return row

    def plan(self, round_num: int, device_ids: Sequence[int]) -> tuple[dict[int, DevicePlan], dict[int, float]]:
        """The round's per-device instructions (the strategy's, then each stage's) and coefficients."""
        plans = dict(self.strategy.plan(round_num, device_ids, self.state))
        self.pipeline.plan(round_num, device_ids, plans)
        samples = self.run_context.samples[np.asarray(device_ids, np.int64)]
        coefficients = self.pipeline.coefficients(self.strategy.weights(samples))
        return plans, dict(zip((int(d) for d in device_ids), coefficients.tolist()))

    def run_round(self, round_num: int) -> RoundRecord:
        self.pipeline.before_round(round_num)  # a stage may end the run here (StopRun)
        start = time.perf_counter()
        outcomes: dict[int, SimOutcome] = {}
        unavailable: list[int] = []
        sim_round = NAN
        run = self.settings
        device_checkpoint = self._broadcast()  # what the devices restore (the server's, unless encoded)
        sent = self.pipeline.download_bytes(len(device_checkpoint), self.flat.size)
        if self.clock is None:
            selected = select_devices(run.devices, run.devices_per_round, run.seed, round_num, poisson=self.poisson)
            run_ids = selected
            cost = self.pipeline.sim_cost(len(selected), self.flat.size)
        else:
            selected, unavailable, want = self._select_available(round_num)
            cost = self.pipeline.sim_cost(len(selected), self.flat.size)
            up = self.pipeline.upload_bytes(self.run_context.upload_bytes, self.flat.size)
            outcomes, sim_round = self.clock.plan(round_num, selected, self.run_context.samples, want, sent, up, cost)
            # devices whose outcome is known before they run (dropped, too late) cost no host time
            run_ids = [d for d in selected if outcomes[d].status == "run"]
        plans, coefficients = self.plan(round_num, run_ids)
        for d, o in outcomes.items():
            if o.status == "run" and o.steps is not None:  # partial work by the deadline: a step budget
                plans[d] = _with_steps(plans.get(d), o.steps)
        work = HostRound(
            round_num,
            dict(self.spec),
            self.pipeline.host_stages(),
            self.accumulate,
            coefficients,
            plans,
            run.seed,
            self.pipeline.modulus(),
        )
        result = self._run_on_hosts(round_num, selected, run_ids, work, device_checkpoint)
        hosts_done = time.perf_counter()
        self.pipeline.absorb({r.device_id: r.state for r in result.reports if r.state})
        reports = list(result.reports)
        samples = self.run_context.samples
        reports += [DeviceReport(d, -1, int(samples[d]), o.status) for d, o in outcomes.items() if o.status != "run"]
        reports += [DeviceReport(d, -1, int(samples[d]), "unavailable") for d in unavailable]
        device_rows = [
            device_row(round_num, r, plans.get(r.device_id), outcomes.get(r.device_id))
            for r in sorted(reports, key=lambda r: r.device_id)
        ]
        if result.partials:
            ok = tuple(r["device_id"] for r in device_rows if r["status"] == "ok")
            gone = tuple(sorted(set(selected) - set(ok)))
            ctx = ServerContext(round_num, self.flat, len(selected), run.seed, ok, gone)
            aggregate = self.pipeline.server(reduce_partials(result.partials), ctx)
            if aggregate is not None:  # None: a stage lost the round's sum (too few to unmask it)
                flat, state = self.strategy.apply(self.flat, aggregate, self.state)
                self._set_global(np.asarray(flat, dtype=np.float32), state)
                used = self.strategy.selected  # the updates a picking rule used (None: every accepted one)
                for r in device_rows:
                    if r["status"] == "ok":
                        r["aggregated"] = float(used is None or r["device_id"] in used)
        if self.clock is not None:  # the server's own work after the last upload (a secure sum's unmasking)
            sim_round += self.pipeline.server_seconds()
        aggregated = time.perf_counter()
        evaluation = None
        if self.evaluates(round_num):  # devices with a test split of their own also score the new model
            evaluation = self.engine.evaluate(self.global_checkpoint, selected if self.run_context.local_eval else [])
        for row in device_rows:
            row["test_accuracy"] = evaluation.device_accuracy.get(row["device_id"], NAN) if evaluation else NAN
        row = round_row(
            round_num,
            device_rows,
            evaluation,
            len(selected),
            RoundTimes(start, hosts_done, aggregated, time.perf_counter()),
            sent,
            plans,
            cost,
        )
        row.update(self.pipeline.round_metrics())
        row.update(self._clocks(sim_round))
        if self.recorder is not None:
            self.recorder.record_round(row, device_rows, self.global_checkpoint, self._saved_state())
        return RoundRecord(row, device_rows)

    def _broadcast(self) -> bytes:
        """The checkpoint the round's devices restore: the global model, or what a stage makes of it."""
        sent = self.pipeline.broadcast(self.flat)
        if sent is self.flat:
            return self.global_checkpoint
        return write_checkpoint(unflatten(np.asarray(sent, np.float32), self.spec), self.scratch)

    def _run_on_hosts(
        self, round_num: int, selected: list[int], run_ids: list[int], work: HostRound, checkpoint: bytes
    ) -> RoundResult:
        """The engine's answer for the round; too few reports are retried once with the same selection."""
        min_devices = self.settings.min_devices
        for attempt in (1, 2):
            if not run_ids:
                return RoundResult()
            result = self.engine.run_round(round_num, checkpoint, run_ids, work)
            reported = sum(r.status != "failed" for r in result.reports)
            if reported >= min(min_devices, len(run_ids)):
                return result
            if attempt == 2:
                # every distinct cause, whole (a cut message once hid the one that mattered)
                errors = sorted({r.error for r in result.reports if r.status == "failed"})
                saved = (
                    f"rounds 1-{round_num - 1} are saved; fix the cause and continue with fedsim run --resume"
                    if round_num > 1
                    else "no round was completed; fix the cause and run the same command again"
                )
                raise RoundFailedError(
                    f"round {round_num}: {reported} of {len(selected)} selected devices reported, fewer than "
                    f"--min-devices {min_devices}, also on the retry (causes: {' | '.join(errors)}); {saved}"
                )
        raise AssertionError("unreachable")

    def _saved_state(self) -> State:
        return {**self.state, **self.pipeline.state()}

    def _set_global(self, flat: np.ndarray, state: State) -> None:
        weights = unflatten(flat, self.spec)
        check_weights(weights, self.spec, flat)  # a strategy bug must not poison the model
        self.flat, self.state = flat, state
        self.global_weights = weights
        self.global_checkpoint = write_checkpoint(weights, self.scratch)

    def _select_available(self, round_num: int) -> tuple[list[int], list[int], int]:
        """(selected, unavailable, how many to keep) on the simulated clock: only available devices are
        selected; with every device selected each round, the unavailable ones are recorded as such;
        --over-select picks more than the round keeps."""
        assert self.clock is not None
        run = self.settings
        available = self.clock.available(round_num)
        if run.devices_per_round >= run.devices:
            ids = np.arange(run.devices)
            return ids[available].tolist(), ids[~available].tolist(), int(available.sum())
        want = run.devices_per_round
        n = math.ceil(self.clock.over_select * want - 1e-9)
        among = np.flatnonzero(available)
        return select_devices(run.devices, n, run.seed, round_num, among, self.poisson), [], want

    def _clocks(self, sim_round: float) -> dict[str, float]:
        """The simulated clock's columns (this round's length and the total so far, --fleet) and the
        seconds since the run began (differences between rounds include recording the tables)."""
        if not np.isnan(sim_round):
            self.sim_elapsed += sim_round
        return {
            "sim_round_s": sim_round,
            "sim_elapsed_s": self.sim_elapsed if not np.isnan(sim_round) else NAN,
            "elapsed_s": time.perf_counter() - self.started,
        }


def _with_steps(plan: DevicePlan | None, steps: int) -> DevicePlan:
    from dataclasses import replace

    return replace(plan or DevicePlan(), steps=steps)
