"""Bulyan (El Mhamdi et al. 2018): n - 2f updates picked by Krum one at a time, then a coordinate-wise
trimmed average of the n - 4f values nearest the median. f as in Krum (lowered to (n - 3) // 4
when a round has too few updates for it)."""

from __future__ import annotations

import numpy as np

from fedsim.strategies import robust
from fedsim.strategies.base import Aggregate, State
from fedsim.strategies.krum import Krum


class Bulyan(Krum):
    name = "bulyan"
    most_f_text = "(n - 3) / 4"

    def most_f(self, n: int) -> int:
        return max((n - 3) // 4, 0)

    def apply(self, weights: np.ndarray, aggregate: Aggregate, state: State) -> tuple[np.ndarray, State]:
        assert aggregate.rows is not None
        n = len(aggregate.rows)
        f = min(self.params.assumed_byzantine or 0, self.most_f(n))
        mean, picked = robust.bulyan(aggregate.rows, weights.astype(np.float64), f)
        self.selected = frozenset(int(d) for d in aggregate.device_ids[picked])
        return mean.astype(weights.dtype), state
