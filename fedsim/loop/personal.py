"""Personalised evaluation in a round's record: which devices score their personal models, and the
columns their scores make (devices.parquet: global_accuracy, personal_accuracy; rounds.parquet: the
spread of personal accuracy, and the share of devices their personal model serves better).

A device's personal model is what its method keeps (partial sharing: the global model with its
personal layers; Ditto: its personal model v; FedAvg: the global model), fine-tuned for
--personal-eval-epochs on its own training data; both it and the global model are scored on the
device's own test split. The evaluation runs on the hosts; nothing of it is kept, and it costs the
phones nothing on the simulated clock (a method's own fine-tuning does, in its rounds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedsim.core import seeded
from fedsim.core.instructions import Instruction
from fedsim.engine.base import PersonalEval

NAN = float("nan")
ROUND_COLUMNS = (
    "global_acc_mean",
    "personal_acc_mean",
    "personal_acc_p10",
    "personal_acc_p50",
    "personal_acc_p90",
    "personal_gain_share",
)
DEVICE_COLUMNS = ("global_accuracy", "personal_accuracy")
EVALUATED = "evaluated"  # a devices-table row of a device that only evaluated this round


def wanted(epochs: int, maker: Instruction | None) -> bool:
    """Whether a run evaluates personal models (a method that keeps them, or fine-tuning asked for)."""
    return epochs > 0 or maker is not None


def devices(total: int, sample: int | None, seed: int, round_num: int) -> tuple[int, ...]:
    """Every device, or a seeded sample of `sample` of them (its own draw, never a round's cohort)."""
    if sample is None or sample >= total:
        return tuple(range(total))
    return tuple(sorted(seeded.choice((seed, round_num, 0xE7A1), total, sample).tolist()))


def evaluation(
    ids: tuple[int, ...],
    epochs: int,
    maker: Instruction | None,
    round_num: int,
    spec: dict[str, Any],
    state_at: dict[int, str],
) -> PersonalEval:
    return PersonalEval(ids, epochs, maker, round_num, spec, state_at)


def record(
    rows: list[dict[str, Any]],
    scores: dict[int, tuple[float, float]],
    round_num: int,
    samples: np.ndarray,
) -> dict[str, float]:
    """The scores into the devices' rows (a row of its own, status `evaluated`, for a device that did
    not take part in the round), and the round's columns."""
    seen = set()
    for r in rows:
        got = scores.get(r["device_id"])
        if got is not None:
            r["global_accuracy"], r["personal_accuracy"] = got
            seen.add(r["device_id"])
    for d in sorted(set(scores) - seen):
        g, p = scores[d]
        rows.append(
            {
                "round": round_num,
                "device_id": d,
                "host": -1,
                "samples": int(samples[d]),
                "status": EVALUATED,
                "reason": "",
                "checkpoint_bytes": 0,
                "global_accuracy": g,
                "personal_accuracy": p,
            }
        )
    rows.sort(key=lambda r: r["device_id"])
    return columns([scores[d] for d in sorted(scores)])  # in id order: the same sums on any host count


def columns(scores: Sequence[tuple[float, float]]) -> dict[str, float]:
    if not scores:
        return dict.fromkeys(ROUND_COLUMNS, NAN)
    g = np.array([s[0] for s in scores])
    p = np.array([s[1] for s in scores])
    return {
        "global_acc_mean": float(g.mean()),
        "personal_acc_mean": float(p.mean()),
        "personal_acc_p10": float(np.percentile(p, 10)),
        "personal_acc_p50": float(np.percentile(p, 50)),
        "personal_acc_p90": float(np.percentile(p, 90)),
        "personal_gain_share": float((p > g).mean()),
    }
