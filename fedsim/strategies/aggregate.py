"""Pure numpy aggregation kernels, testable by hand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.strategies.base import Weights


def weighted_mean(weights: Sequence[Weights], factors: Sequence[float]) -> Weights:
    """sum_i factors_i * weights_i / sum_i factors_i, per tensor, accumulated in float64."""
    if not weights:
        raise ValueError("weighted_mean of no weights")
    if len(weights) != len(factors):
        raise ValueError(f"{len(weights)} weight sets but {len(factors)} factors")
    f = np.asarray(factors, dtype=np.float64)
    if np.any(f < 0) or f.sum() <= 0:
        raise ValueError(f"factors must be >= 0 with a positive sum, got {list(factors)}")
    f = f / f.sum()
    out: Weights = {}
    for name, first in weights[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for w, fi in zip(weights, f):
            acc += fi * w[name]
        out[name] = acc.astype(first.dtype)
    return out
