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

    Kept as one flat vector (the tensors back to back, in the first update's key order): one numpy
    call per update instead of one per tensor, which matters when it runs for every device.
    Updates that share a coefficient (IID shard sizes differ by at most one sample, so FedAvg sees
    one or two values) are first summed unscaled: a float64 += float32 instead of a multiplication
    and an addition, and each group is scaled once at the end. At most `max_groups` groups are kept
    (each holds a float64 copy of the model); other coefficients are scaled at once.
    """

    def __init__(self, max_groups: int = 4) -> None:
        self.max_groups = max_groups
        self.layout: list[tuple[str, tuple[int, ...]]] = []  # (name, shape) in flat order
        self.groups: dict[float, np.ndarray] = {}
        self.scaled: np.ndarray | None = None
        self.total, self.count = 0.0, 0

    def add(self, weights: Mapping[str, np.ndarray], coefficient: float, flat: np.ndarray | None = None) -> None:
        """Add c * weights. `flat`: the same values as one vector in `weights`' key order, if the
        caller already has them so (saves a concatenation)."""
        if not self.layout:
            self.layout = [(name, np.shape(w)) for name, w in weights.items()]
        if flat is None:
            flat = np.concatenate([np.ravel(weights[name]) for name, _ in self.layout])
        group = self.groups.get(coefficient)
        if group is not None:
            np.add(group, flat, out=group)
        elif len(self.groups) < self.max_groups:
            self.groups[coefficient] = flat.astype(np.float64)
        elif self.scaled is None:
            self.scaled = np.multiply(flat, coefficient, dtype=np.float64)
        else:
            # The product is formed in float64: a float32 product would round away the low bits
            # and make the result depend on how devices are grouped into hosts.
            np.add(self.scaled, np.multiply(flat, coefficient, dtype=np.float64), out=self.scaled)
        self.total += coefficient
        self.count += 1

    def partial(self) -> Partial:
        acc = None if self.scaled is None else self.scaled.copy()
        for coefficient, group in sorted(self.groups.items()):
            product = np.multiply(group, coefficient, dtype=np.float64)
            acc = product if acc is None else np.add(acc, product, out=acc)
        weighted: dict[str, np.ndarray] = {}
        pos = 0
        for name, shape in self.layout:
            size = int(np.prod(shape))
            weighted[name] = acc[pos : pos + size].reshape(shape) if acc is not None else np.zeros(shape)
            pos += size
        return Partial(weighted, self.total, self.count)


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
