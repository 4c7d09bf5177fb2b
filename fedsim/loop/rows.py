"""The rows a round records: one per device (devices.parquet) and one for the round (rounds.parquet).
Pure functions of what the round produced; the column lists are fedsim.results.schema's."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.clock.clock import SimOutcome
from fedsim.engine.base import DeviceReport, Evaluation
from fedsim.pipeline.base import SimCost
from fedsim.strategies.base import HONEST, DevicePlan

NAN = float("nan")


@dataclass(frozen=True)
class RoundTimes:
    """perf_counter stamps of a round's phases."""

    start: float
    hosts_done: float
    aggregated: float
    evaluated: float


def device_row(round_num: int, r: DeviceReport, plan: DevicePlan | None, outcome: SimOutcome | None) -> dict[str, Any]:
    recorded = {k: v for ins in plan.instructions.values() for k, v in ins.record().items()} if plan else {}
    return (
        r.metrics
        | recorded
        | {
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
            "sim_compute_s": outcome.compute_s if outcome is not None else NAN,
            "sim_comm_s": outcome.comm_s if outcome is not None else NAN,
            "sim_finish_s": outcome.finish_s if outcome is not None else NAN,
            "sim_energy_j": outcome.energy_j if outcome is not None else NAN,
        }
    )


def round_row(
    round_num: int,
    device_rows: Sequence[dict[str, Any]],
    evaluation: Evaluation | None,
    selected: int,
    times: RoundTimes,
    sent: int,
    plans: Mapping[int, DevicePlan],
    cost: SimCost | None = None,
) -> dict[str, Any]:
    """The round's row, less the clock's and the run's running totals (the coordinator adds those).
    `sent`: the bytes of the global checkpoint each selected device downloaded; `cost`: what the
    pipeline's stages add per device (a secure aggregation's keys and shares)."""
    cost = cost or SimCost()
    accepted = [r for r in device_rows if r["status"] == "ok"]
    reporting = sum(r["status"] in ("ok", "rejected") for r in device_rows)
    per_device = evaluation.device_accuracy if evaluation is not None else {}
    spread = np.array(list(per_device.values())) if per_device else None  # (none: NaN, without numpy's warnings)
    samples = sum(r["samples"] for r in accepted)
    train_loss = sum(r["train_loss"] * r["samples"] for r in accepted) / samples if samples else NAN
    # what instructions add to the wire (SCAFFOLD's c - c_i down, a control variate up with an accepted update)
    extra_down = sum(ins.bytes_down() for p in plans.values() for ins in p.instructions.values())
    extra_up = sum(
        ins.bytes_up()
        for r in accepted
        if r["device_id"] in plans
        for ins in plans[r["device_id"]].instructions.values()
    )
    return {
        "round": round_num,
        "test_accuracy": evaluation.accuracy if evaluation is not None else NAN,
        "test_loss": evaluation.loss if evaluation is not None else NAN,
        "train_loss": train_loss,
        "device_acc_mean": float(np.mean(spread)) if spread is not None else NAN,
        "device_acc_p10": float(np.percentile(spread, 10)) if spread is not None else NAN,
        "device_acc_p90": float(np.percentile(spread, 90)) if spread is not None else NAN,
        "devices_selected": selected,
        "devices_reported": reporting,
        "devices_accepted": len(accepted),
        "samples": samples,
        "wall_s": times.evaluated - times.start,
        "hosts_s": times.hosts_done - times.start,  # dispatch until every host answered
        "aggregate_s": times.aggregated - times.hosts_done,
        "evaluate_s": times.evaluated - times.aggregated,
        "bytes_up": sum(r["checkpoint_bytes"] for r in device_rows) + extra_up + cost.up_bytes * reporting,
        "bytes_down": (sent + cost.down_bytes) * selected + extra_down,
        "sim_energy_j": _energy(device_rows),
    }


def _energy(device_rows: Sequence[dict[str, Any]]) -> float:
    """The joules the round's devices spent (those whose energy is known; NaN off the clock)."""
    known = [r["sim_energy_j"] for r in device_rows if not np.isnan(r.get("sim_energy_j", NAN))]
    return float(sum(known)) if known else NAN


# A text task's columns (Task.text): a keyboard's suggestion-strip accuracy, and perplexity
TEXT_ROUND_COLUMNS = ("test_top3_accuracy", "test_perplexity")
TEXT_DEVICE_COLUMNS = ("test_loss", "test_perplexity")


def text_columns(evaluation: Evaluation | None, device_rows: list[dict[str, Any]]) -> dict[str, float]:
    """The text columns of a round's row, and each device row's loss and perplexity on its own split."""
    for r in device_rows:
        lost = evaluation.device_loss.get(r["device_id"], NAN) if evaluation is not None else NAN
        r["test_loss"], r["test_perplexity"] = lost, float(np.exp(lost))
    if evaluation is None:
        return dict.fromkeys(TEXT_ROUND_COLUMNS, NAN)
    return {"test_top3_accuracy": evaluation.top3_accuracy, "test_perplexity": float(np.exp(evaluation.loss))}


def initial_row(evaluation: Evaluation, took: float) -> dict[str, Any]:
    """--eval-initial: round 0, the initial model on the test set (no device ran)."""
    return {
        "round": 0,
        "test_accuracy": evaluation.accuracy,
        "test_loss": evaluation.loss,
        "train_loss": NAN,
        "device_acc_mean": NAN,
        "device_acc_p10": NAN,
        "device_acc_p90": NAN,
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
    }
