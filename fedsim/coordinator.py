"""The round loop: select -> run on devices -> restore -> aggregate -> evaluate -> record.

Knows the engine only through its interface and the strategy only through `aggregate`; the concrete
engine, the evaluator and the recorder are passed in. No TensorFlow and no Ray here.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from fedsim.checkpoint import (
    UpdateScreen,
    WeightSpec,
    check_weights,
    flatten,
    read_checkpoint,
    scratch_dir,
    spec_of,
    unflatten,
    write_checkpoint,
)
from fedsim.config import Config
from fedsim.engine.base import DeviceReport, Engine, Evaluation, HostPipeline, RoundResult
from fedsim.fleet import Clock, Outcome
from fedsim.strategies.attacks import Attack, byzantine_devices
from fedsim.strategies.base import HONEST, DevicePlan, State, Strategy, Weights, reduce_partials

Evaluate = Callable[[bytes, Sequence[int]], Evaluation]


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
    num_devices: int, per_round: int, seed: int, round_num: int, among: np.ndarray | None = None
) -> list[int]:
    """The seeded choice of devices for a round; all of them when per_round covers them. `among`:
    the ids to choose from (the simulated clock's available devices), else every device."""
    pool = np.arange(num_devices) if among is None else np.asarray(among)
    if per_round >= len(pool):
        return [int(d) for d in pool]
    rng = np.random.default_rng([seed, round_num, 0x5E1EC7])
    return sorted(int(d) for d in rng.choice(num_devices if among is None else pool, size=per_round, replace=False))


@dataclass
class RoundOutcome:
    round_row: dict[str, Any]
    device_rows: list[dict[str, Any]] = field(default_factory=list)


class Coordinator:
    def __init__(
        self,
        config: Config,
        engine: Engine,
        strategy: Strategy,
        evaluate: Evaluate,
        initial_checkpoint: bytes,
        recorder: Recorder | None = None,
        progress: bool = True,
        started: float | None = None,
        local_eval: bool | None = None,
        state: State | None = None,
        num_classes: int = 0,
        clock: Clock | None = None,
        samples: np.ndarray | None = None,
        upload_bytes: int = 0,
        sim_started: float = 0.0,
    ) -> None:
        self.config = config
        self.engine = engine
        self.strategy = strategy
        self.evaluate = evaluate
        self.recorder = recorder
        self.progress = progress
        # whether the selected devices score each new model on their own test split
        self.local_eval = config.device_test_fraction > 0 if local_eval is None else local_eval
        self.started = time.perf_counter() if started is None else started  # for elapsed_s
        self.scratch = scratch_dir("fedsim-coordinator-")
        self.global_weights: Weights = read_checkpoint(initial_checkpoint, self.scratch)
        self.spec: WeightSpec = spec_of(self.global_weights)
        # Every global checkpoint in fedsim's own layout (one block per entry, which the devices'
        # Restore ops read more cheaply), the first one too: same weights, other bytes.
        self.global_checkpoint = write_checkpoint(self.global_weights, self.scratch)
        self.screen = UpdateScreen(self.spec, config.max_update_norm, config.clip_update_norm)
        self.flat = flatten(self.global_weights, self.spec)
        # the strategy's server state: from the last committed round on resume, else fresh
        fresh = strategy.init(self.flat)
        if state is not None and {k: np.shape(v) for k, v in state.items()} != {
            k: np.shape(v) for k, v in fresh.items()
        }:
            raise ValueError(
                f"the saved server state holds {sorted(state) or 'nothing'}, but {strategy.name} keeps "
                f"{sorted(fresh) or 'nothing'} of the model's size; it cannot continue this run"
            )
        self.state: State = fresh if state is None else state
        self.attack = Attack(config.attack, config.attack_scale, config.seed) if config.attack else None
        self.attackers = (
            byzantine_devices(config.devices, config.byzantine, config.seed)
            if self.attack is not None
            else np.zeros(0, np.int64)
        )
        # hosts send every update when the strategy is an order statistic or the attack reads the honest ones
        needs_rows = strategy.accumulate == "stack" or (self.attack is not None and self.attack.needs_rows)
        self.accumulate = "stack" if needs_rows else "sum"
        self.num_classes = num_classes
        # the simulated clock (--fleet): device profiles, the latency table and the round policy
        self.clock = clock
        self.samples = samples  # each device's training samples (what its steps follow)
        self.upload_bytes = upload_bytes  # the size of a device's saved checkpoint
        self.sim_elapsed = sim_started
        self.last: RoundOutcome | None = None  # the latest round only: a long run keeps no history here

    def evaluates(self, round_num: int) -> bool:
        """Whether the global model is evaluated after `round_num` (--eval-every; always after the last)."""
        return round_num % self.config.eval_every == 0 or round_num == self.config.rounds

    def run(self, start_round: int = 1) -> RoundOutcome | None:
        """Run rounds start_round..config.rounds; the last round's outcome (the tables hold them all)."""
        bar = tqdm(
            total=self.config.rounds, initial=start_round - 1, desc="fedsim", unit="round", disable=not self.progress
        )
        try:
            if self.config.eval_initial and start_round == 1:
                row = self.record_initial()
                bar.set_postfix(acc=f"{row['test_accuracy']:.4f}", loss=f"{row['test_loss']:.3f}")
            for round_num in range(start_round, self.config.rounds + 1):
                outcome = self.last = self.run_round(round_num)
                row = outcome.round_row
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
        simulated clock starts at 0)."""
        start = time.perf_counter()
        evaluation = self.evaluate(self.global_checkpoint, [])
        took = time.perf_counter() - start
        nan = float("nan")
        row = {
            "round": 0,
            "test_accuracy": evaluation.accuracy,
            "test_loss": evaluation.loss,
            "train_loss": nan,
            "device_acc_mean": nan,
            "device_acc_p10": nan,
            "device_acc_p90": nan,
            "devices_selected": 0,
            "devices_reported": 0,
            "devices_accepted": 0,
            "samples": 0,
            "wall_s": took,
            "hosts_s": 0.0,
            "aggregate_s": 0.0,
            "evaluate_s": took,
            "bytes_up": 0,
            "bytes_down": 0,
            "sim_round_s": 0.0 if self.clock is not None else nan,
            "sim_elapsed_s": self.sim_elapsed if self.clock is not None else nan,
            "elapsed_s": time.perf_counter() - self.started,
        }
        if self.recorder is not None:
            self.recorder.record_round(row, [], self.global_checkpoint, self.state)
        return row

    def plan(self, round_num: int, selected: Sequence[int]) -> dict[int, DevicePlan]:
        """The round's per-device instructions: the strategy's, with the attackers' roles on top."""
        plan = dict(self.strategy.plan(round_num, selected, self.state))
        if self.attack is not None:
            for d in np.intersect1d(self.attackers, selected).tolist():
                plan[d] = dataclasses.replace(plan.get(d, DevicePlan()), role=self.attack.kind)
        return plan

    def run_round(self, round_num: int) -> RoundOutcome:
        start = time.perf_counter()
        outcomes: dict[int, Outcome] = {}
        unavailable: list[int] = []
        sim_round = float("nan")
        if self.clock is None:
            selected = select_devices(self.config.devices, self.config.devices_per_round, self.config.seed, round_num)
            run_ids = selected
        else:
            selected, unavailable, want = self._select_available(round_num)
            outcomes, sim_round = self.clock.plan(
                round_num, selected, self.samples, want, len(self.global_checkpoint), self.upload_bytes
            )
            # devices whose outcome is known before they run (dropped, too late) cost no host time
            run_ids = [d for d in selected if outcomes[d].status == "run"]
        plan = self.plan(round_num, run_ids)
        for d, o in outcomes.items():
            if o.status == "run" and o.steps is not None:  # partial work by the deadline
                plan[d] = dataclasses.replace(plan.get(d, DevicePlan()), steps=o.steps)
        pipeline = HostPipeline(self.screen, self.strategy, self.accumulate, self.attack, plan, self.num_classes)
        for attempt in (1, 2):
            if not run_ids:
                result = RoundResult()
                break
            result = self.engine.run_round(round_num, self.global_checkpoint, run_ids, pipeline)
            reported = sum(r.status != "failed" for r in result.reports)
            if reported >= min(self.config.min_devices, len(run_ids)):
                break
            if attempt == 2:
                errors = sorted({r.error for r in result.reports if r.status == "failed"})
                raise RoundFailedError(
                    f"round {round_num}: {reported} of {len(selected)} selected devices reported, fewer than "
                    f"--min-devices {self.config.min_devices}, also on the retry ({'; '.join(errors)[:300]}); "
                    f"rounds 1-{round_num - 1} are saved; fix the cause and continue with fedsim run --resume"
                )
        hosts_done = time.perf_counter()
        sent = len(self.global_checkpoint)  # the checkpoint the devices restored (before it is replaced)
        reports = list(result.reports)
        for d, o in outcomes.items():
            if o.status != "run":
                reports.append(DeviceReport(d, -1, int(self.samples[d]), o.status))
        reports += [DeviceReport(d, -1, int(self.samples[d]), "unavailable") for d in unavailable]
        device_rows = [
            self._row(round_num, r, plan.get(r.device_id), outcomes.get(r.device_id))
            for r in sorted(reports, key=lambda r: r.device_id)
        ]
        accepted = [r for r in device_rows if r["status"] == "ok"]
        if result.partials:
            aggregate = reduce_partials(result.partials)
            if self.attack is not None and self.attack.needs_rows:
                aggregate = self.attack.alie(aggregate, self.attackers)
            if aggregate.rows is not None and any(p.steps is not None for p in plan.values()):
                aggregate.steps = np.array(
                    [
                        plan[d].steps if d in plan and plan[d].steps is not None else -1
                        for d in aggregate.device_ids.tolist()
                    ],
                    np.int64,
                )
            flat, state = self.strategy.apply(self.flat, aggregate, self.state)
            self._set_global(np.asarray(flat, dtype=np.float32), state)
        aggregated = time.perf_counter()
        # Devices with a test split of their own also score the new model on it.
        if self.evaluates(round_num):
            local = selected if self.local_eval else []
            evaluation = self.evaluate(self.global_checkpoint, local)
            accuracy, loss, per_device = evaluation.accuracy, evaluation.loss, evaluation.device_accuracy
        else:
            accuracy, loss, per_device = float("nan"), float("nan"), {}
        for row in device_rows:
            row["test_accuracy"] = per_device.get(row["device_id"], float("nan"))
        spread = np.array(list(per_device.values())) if per_device else np.full(1, np.nan)
        evaluated = time.perf_counter()
        samples = sum(r["samples"] for r in accepted)
        train_loss = sum(r["train_loss"] * r["samples"] for r in accepted) / samples if samples else float("nan")
        round_row = {
            "round": round_num,
            "test_accuracy": accuracy,
            "test_loss": loss,
            "train_loss": train_loss,
            "device_acc_mean": float(np.mean(spread)),
            "device_acc_p10": float(np.percentile(spread, 10)),
            "device_acc_p90": float(np.percentile(spread, 90)),
            "devices_selected": len(selected),
            "devices_reported": sum(r["status"] in ("ok", "rejected") for r in device_rows),
            "devices_accepted": len(accepted),
            "samples": samples,
            "wall_s": evaluated - start,
            "hosts_s": hosts_done - start,  # dispatch until every host answered
            "aggregate_s": aggregated - hosts_done,
            "evaluate_s": evaluated - aggregated,
            # SCAFFOLD's control variates travel too: c - c_i down, the device's change of c_i up
            "bytes_up": sum(r["checkpoint_bytes"] for r in device_rows)
            + sum(len(plan[r["device_id"]].control or b"") for r in accepted if r["device_id"] in plan),
            "bytes_down": sent * len(selected) + sum(len(p.control or b"") for p in plan.values()),
            # the simulated clock (--fleet): this round's length and the total so far, in seconds
            "sim_round_s": sim_round,
            "sim_elapsed_s": self._tick(sim_round),
            # seconds since the run began; differences between rounds include the recording of the tables
            "elapsed_s": time.perf_counter() - self.started,
        }
        if self.recorder is not None:
            self.recorder.record_round(round_row, device_rows, self.global_checkpoint, self.state)
        return RoundOutcome(round_row, device_rows)

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
        available = self.clock.available(round_num)
        if self.config.devices_per_round >= self.config.devices:
            ids = np.arange(self.config.devices)
            return ids[available].tolist(), ids[~available].tolist(), int(available.sum())
        want = self.config.devices_per_round
        n = math.ceil(self.clock.over_select * want - 1e-9)
        return select_devices(self.config.devices, n, self.config.seed, round_num, np.flatnonzero(available)), [], want

    def _tick(self, sim_round: float) -> float:
        if not np.isnan(sim_round):
            self.sim_elapsed += sim_round
            return self.sim_elapsed
        return float("nan")

    @staticmethod
    def _row(
        round_num: int, r: DeviceReport, plan: DevicePlan | None, outcome: Outcome | None = None
    ) -> dict[str, Any]:
        nan = float("nan")
        return {
            "round": round_num,
            "device_id": r.device_id,
            "host": r.host,
            "samples": r.samples,
            "train_loss": r.train_loss,
            "train_s": r.train_s,
            "checkpoint_bytes": r.checkpoint_bytes,
            "status": r.status,
            "reason": r.error,
            "role": plan.role if plan is not None else HONEST,
            "mu": plan.mu if plan is not None else nan,
            "sim_compute_s": outcome.compute_s if outcome is not None else nan,
            "sim_comm_s": outcome.comm_s if outcome is not None else nan,
            "sim_finish_s": outcome.finish_s if outcome is not None else nan,
        }
