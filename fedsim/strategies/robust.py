"""Order-statistic kernels on the (updates x parameters) matrix: coordinate-wise median and trimmed
mean, Krum and Multi-Krum scores, Bulyan. numpy over whole matrices, no per-layer loops."""

from __future__ import annotations

import numpy as np


def median(rows: np.ndarray) -> np.ndarray:
    return np.median(rows, axis=0)


def trimmed_mean(rows: np.ndarray, trim: int) -> np.ndarray:
    """Per coordinate: drop the `trim` largest and `trim` smallest values, average the rest."""
    n = len(rows)
    if not 0 <= 2 * trim < n:
        raise ValueError(f"cannot trim {trim} from each end of {n} updates")
    if trim == 0:
        return rows.mean(axis=0, dtype=np.float64)
    s = np.sort(rows, axis=0)
    return s[trim : n - trim].mean(axis=0, dtype=np.float64)


def squared_distances(rows: np.ndarray, center: np.ndarray) -> np.ndarray:
    """(n, n) squared L2 distances between the rows, in float64 via the Gram matrix of rows - center
    (centring on the global model keeps the differences of large norms from cancelling)."""
    d = rows.astype(np.float64) - center
    g = d @ d.T
    sq = np.diag(g)
    out = sq[:, None] + sq[None, :] - 2 * g
    np.fill_diagonal(out, 0.0)
    return np.maximum(out, 0.0)


def krum_scores(dist: np.ndarray, f: int) -> np.ndarray:
    """Blanchard et al. 2017: each update's sum of squared distances to its n - f - 2 nearest others."""
    n = len(dist)
    k = n - f - 2
    if k < 1:
        raise ValueError(f"Krum needs n > f + 2 updates, got n = {n}, f = {f}")
    others = np.where(np.eye(n, dtype=bool), np.inf, dist)
    return np.sort(others, axis=1)[:, :k].sum(axis=1)


def multi_krum(rows: np.ndarray, center: np.ndarray, f: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean of the m updates with the lowest Krum scores, their indices); m = 1 is Krum."""
    scores = krum_scores(squared_distances(rows, center), f)
    chosen = np.argsort(scores, kind="stable")[:m]
    return rows[chosen].mean(axis=0, dtype=np.float64), chosen


def bulyan(rows: np.ndarray, center: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """El Mhamdi et al. 2018: pick theta = n - 2f updates by Krum one at a time (each pick leaves the
    set), then per coordinate average the beta = theta - 2f values closest to the picked updates'
    median. Needs n >= 4f + 3."""
    n = len(rows)
    if n < 4 * f + 3:
        raise ValueError(f"Bulyan needs n >= 4f + 3 updates, got n = {n}, f = {f}")
    dist = squared_distances(rows, center)
    remaining = list(range(n))
    picked: list[int] = []
    for _ in range(n - 2 * f):
        sub = dist[np.ix_(remaining, remaining)]
        k = len(remaining) - f - 2
        if k >= 1:
            best = remaining[int(np.argmin(krum_scores(sub, f)))]
        else:  # too few left for Krum's neighbourhood: the one closest to the rest
            best = remaining[int(np.argmin(sub.sum(axis=1)))]
        picked.append(best)
        remaining.remove(best)
    selected = rows[picked].astype(np.float64)
    beta = len(picked) - 2 * f
    med = np.median(selected, axis=0)
    distance = np.abs(selected - med)
    if beta < len(picked):  # the beta nearest per coordinate, in any order (a partition, not a sort)
        closest = np.argpartition(distance, beta - 1, axis=0)[:beta]
        selected = np.take_along_axis(selected, closest, axis=0)
    return selected.mean(axis=0), np.array(picked)
