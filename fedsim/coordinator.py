"""The round loop: select -> run on devices -> restore -> aggregate -> evaluate -> record.

Knows the engine only through its interface and the strategy only through `aggregate`; the concrete
engine, the evaluator and the recorder are passed in. No TensorFlow and no Ray here.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from fedsim.checkpoint import (
    CheckpointError, UpdateScreen, WeightSpec, check_weights, read_checkpoint, scratch_dir, spec_of, write_checkpoint,
)
from fedsim.config import Config
from fedsim.engine.base import DeviceReport, Engine, Evaluation, HostReduce
from fedsim.strategies.base import Strategy, Update, Weights

Evaluate = Callable[[bytes, Sequence[int]], Evaluation]


class RoundFailedError(RuntimeError):
    """Too few devices reported in a round, twice: the run stops; completed rounds stay on disk."""


class Recorder(Protocol):
    def record_round(self, round_row: dict[str, Any], device_rows: list[dict[str, Any]], global_checkpoint: bytes) -> None: ...


def select_devices(num_devices: int, per_round: int, seed: int, round_num: int) -> list[int]:
    """The seeded choice of devices for a round; all of them when per_round == num_devices."""
    if per_round >= num_devices:
        return list(range(num_devices))
    rng = np.random.default_rng([seed, round_num, 0x5E1EC7])
    return sorted(int(d) for d in rng.choice(num_devices, size=per_round, replace=False))


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
        self.last: RoundOutcome | None = None  # the latest round only: a long run keeps no history here

    def evaluates(self, round_num: int) -> bool:
        """Whether the global model is evaluated after `round_num` (--eval-every; always after the last)."""
        return round_num % self.config.eval_every == 0 or round_num == self.config.rounds

    def run(self, start_round: int = 1) -> RoundOutcome | None:
        """Run rounds start_round..config.rounds; the last round's outcome (the tables hold them all)."""
        bar = tqdm(total=self.config.rounds, initial=start_round - 1, desc="fedsim", unit="round", disable=not self.progress)
        try:
            for round_num in range(start_round, self.config.rounds + 1):
                outcome = self.last = self.run_round(round_num)
                row = outcome.round_row
                if not np.isnan(row["test_accuracy"]):  # rounds without evaluation keep the last figures
                    bar.set_postfix(acc=f"{row['test_accuracy']:.4f}", loss=f"{row['test_loss']:.3f}",
                                    s=f"{row['wall_s']:.2f}")
                bar.update(1)
        finally:
            bar.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
        return self.last

    def run_round(self, round_num: int) -> RoundOutcome:
        start = time.perf_counter()
        selected = select_devices(self.config.devices, self.config.devices_per_round, self.config.seed, round_num)
        reduce = HostReduce(self.screen, self.strategy) if self.strategy.linear else None
        for attempt in (1, 2):
            result = self.engine.run_round(round_num, self.global_checkpoint, selected, reduce)
            reported = sum(r.status != "failed" for r in result.reports)
            if reported >= self.config.min_devices:
                break
            if attempt == 2:
                errors = sorted({r.error for r in result.reports if r.status == "failed"})
                raise RoundFailedError(
                    f"round {round_num}: {reported} of {len(selected)} selected devices reported, fewer than "
                    f"--min-devices {self.config.min_devices}, also on the retry ({'; '.join(errors)[:300]}); "
                    f"rounds 1-{round_num - 1} are saved; fix the cause and continue with fedsim run --resume"
                )
        hosts_done = time.perf_counter()
        if reduce is not None:
            # Hosts validated and pre-summed their devices' checkpoints; partials came back, not checkpoints.
            device_rows = [self._row(round_num, r, r.status, r.error) for r in sorted(result.reports, key=lambda r: r.device_id)]
            accepted = [r for r in device_rows if r["status"] == "ok"]
            if result.partials:
                self._set_global(self.strategy.aggregate_partials(self.global_weights, result.partials))
        else:
            updates, device_rows = self._accept(round_num, result.reports)
            accepted = [r for r in device_rows if r["status"] == "ok"]
            if updates:
                self._set_global(self.strategy.aggregate(self.global_weights, updates))
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
            "devices_reported": sum(r["status"] != "failed" for r in device_rows),
            "devices_accepted": len(accepted),
            "samples": samples,
            "wall_s": evaluated - start,
            "hosts_s": hosts_done - start,  # dispatch until every host answered
            "aggregate_s": aggregated - hosts_done,
            "evaluate_s": evaluated - aggregated,
            "bytes_up": sum(r["checkpoint_bytes"] for r in device_rows),
            "bytes_down": len(self.global_checkpoint) * len(selected),
            # seconds since the run began; differences between rounds include the recording of the tables
            "elapsed_s": time.perf_counter() - self.started,
        }
        if self.recorder is not None:
            self.recorder.record_round(round_row, device_rows, self.global_checkpoint)
        return RoundOutcome(round_row, device_rows)

    def _set_global(self, weights: Weights) -> None:
        check_weights(weights, self.spec)  # a strategy bug must not poison the model
        self.global_weights = weights
        self.global_checkpoint = write_checkpoint(weights, self.scratch)

    @staticmethod
    def _row(round_num: int, r: DeviceReport, status: str, reason: str) -> dict[str, Any]:
        return {
            "round": round_num,
            "device_id": r.device_id,
            "host": r.host,
            "samples": r.samples,
            "train_loss": r.train_loss,
            "train_s": r.train_s,
            "checkpoint_bytes": r.checkpoint_bytes,
            "status": status,
            "reason": reason,
        }

    def _accept(self, round_num: int, reports: Sequence[DeviceReport]) -> tuple[list[Update], list[dict[str, Any]]]:
        """Restore every reported checkpoint into named weights; reject (and record) any that is
        unreadable, does not match the model, or is not finite. Rejected updates are never averaged."""
        updates: list[Update] = []
        rows: list[dict[str, Any]] = []
        for r in sorted(reports, key=lambda r: r.device_id):
            status, reason = r.status, r.error
            if status == "ok":
                try:
                    weights, reason = self.screen.screen(read_checkpoint(r.checkpoint or b"", self.scratch), self.global_weights)
                    updates.append(Update(r.device_id, weights, r.samples))
                except CheckpointError as e:
                    status, reason = "rejected", str(e)
            rows.append(self._row(round_num, r, status, reason))
        return updates, rows
