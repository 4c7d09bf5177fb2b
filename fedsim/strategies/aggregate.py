"""Pure numpy aggregation kernels, testable by hand."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fedsim.strategies.base import Partial, Weights


def accumulate(acc: dict[str, np.ndarray], weights: Mapping[str, np.ndarray], coefficient: float) -> None:
    """acc += coefficient * weights, per tensor, in float64 (acc starts empty)."""
    for name, w in weights.items():
        if name in acc:
            # The product is formed in float64: a float32 product would round away the low bits
            # and make the result depend on how devices are grouped into hosts.
            np.add(acc[name], np.multiply(w, coefficient, dtype=np.float64), out=acc[name])
        else:
            acc[name] = np.multiply(w, coefficient, dtype=np.float64)


class PartialSum:
    """A host's running sum_i c_i * w_i (float64), total c_i and count.

    Updates that share a coefficient (IID shard sizes differ by at most one sample, so FedAvg sees one
    or two values) are first summed unscaled: a float64 += float32 per tensor instead of a
    multiplication and an addition, and each group is scaled once at the end. At most `max_groups`
    groups are kept (each holds a float64 copy of the model); other coefficients are scaled at once.
    """

    def __init__(self, max_groups: int = 4) -> None:
        self.max_groups = max_groups
        self.groups: dict[float, dict[str, np.ndarray]] = {}
        self.scaled: dict[str, np.ndarray] = {}
        self.total, self.count = 0.0, 0

    def add(self, weights: Mapping[str, np.ndarray], coefficient: float) -> None:
        group = self.groups.get(coefficient)
        if group is not None:
            for name, w in weights.items():
                np.add(group[name], w, out=group[name])
        elif len(self.groups) < self.max_groups:
            self.groups[coefficient] = {name: w.astype(np.float64) for name, w in weights.items()}
        else:
            accumulate(self.scaled, weights, coefficient)
        self.total += coefficient
        self.count += 1

    def partial(self) -> Partial:
        acc = {name: a.copy() for name, a in self.scaled.items()}
        for coefficient, group in sorted(self.groups.items()):
            accumulate(acc, group, coefficient)
        return Partial(acc, self.total, self.count)


def combine_partials(partials: Sequence[Partial], dtypes: Mapping[str, np.dtype]) -> Weights:
    """(sum of the partials' weighted sums) / (sum of their weights), cast back to the model's dtypes."""
    live = [p for p in partials if p.count > 0]
    total = sum(p.total_weight for p in live)
    if not live or total <= 0:
        raise ValueError("no partial holds a positive weight")
    out: Weights = {}
    for name, dtype in dtypes.items():
        acc = np.zeros_like(live[0].weighted_sum[name])
        for p in live:
            acc += p.weighted_sum[name]
        out[name] = (acc / total).astype(dtype)
    return out


def weighted_mean(weights: Sequence[Weights], factors: Sequence[float]) -> Weights:
    """sum_i factors_i * weights_i / sum_i factors_i, per tensor, accumulated in float64."""
    if not weights:
        raise ValueError("weighted_mean of no weights")
    if len(weights) != len(factors):
        raise ValueError(f"{len(weights)} weight sets but {len(factors)} factors")
    f = np.asarray(factors, dtype=np.float64)
    if np.any(f < 0) or f.sum() <= 0:
        raise ValueError(f"factors must be >= 0 with a positive sum, got {list(factors)}")
    acc: dict[str, np.ndarray] = {}
    for w, fi in zip(weights, f):
        accumulate(acc, w, float(fi))
    return {name: (acc[name] / f.sum()).astype(first.dtype) for name, first in weights[0].items()}
