"""Dealing a round's devices to hosts by their expected cost, so the round ends when the work is done
rather than when the unluckiest host is."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedsim.core.context import local_steps

if TYPE_CHECKING:
    from fedsim.engine.settings import HostSettings


def expected_costs(samples: np.ndarray, settings: HostSettings, latency_ms: Mapping[str, float] | None) -> np.ndarray:
    """Expected seconds of each device's round: restore + its train batches + save, at the latencies
    the artifact report measured (one batch per 32 samples and 1 ms of fixed cost without one)."""
    latency = latency_ms or {}
    batches = local_steps(samples, settings.batch_size, settings.local_epochs)
    fixed = latency.get("restore", 0.5) + latency.get("save", 0.5)
    return (fixed + batches * latency.get("train", 0.3)) / 1e3


def deal(device_ids: Sequence[int], costs: np.ndarray | None, num_hosts: int) -> dict[int, list[int]]:
    """A round's devices per host (hosts with none left out), so the round ends when the work is
    done rather than when the unluckiest host is: the most expensive device first, each to the host
    with the least expected work so far (LPT). Deterministic; each host's list is in id order.
    Without costs every device counts the same."""
    ids = sorted(int(d) for d in device_ids)
    if num_hosts <= 1:
        return {0: ids} if ids else {}
    cost = (lambda d: float(costs[d])) if costs is not None else (lambda d: 1.0)
    loads = [(0.0, h) for h in range(num_hosts)]
    per_host: dict[int, list[int]] = {}
    for d in sorted(ids, key=lambda d: (-cost(d), d)):
        load, h = heapq.heappop(loads)
        per_host.setdefault(h, []).append(d)
        heapq.heappush(loads, (load + cost(d), h))
    return {h: sorted(mine) for h, mine in sorted(per_host.items())}
