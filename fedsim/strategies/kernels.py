"""A compiled loop for FedBuff's stale updates (numba): the update moved onto the current model and
added to a running sum in one pass over memory, where the numpy expressions take five (and allocate
two float64 copies of the model); the same float64 operations in the same order, so the sums are
identical to those expressions (tests/test_async.py compares). Compiled on first use and cached on
disk (numba's cache, beside this file or in NUMBA_CACHE_DIR)."""

from __future__ import annotations

import numpy as np
from numba import njit

# how the moved update u enters `out`: out += u; out = u; out = u * c; out += u * c
ADD, SET, SET_SCALED, ADD_SCALED = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def add_moved(out, how, row, start, weight, current, coefficient):
    """u = (float64(row) - float64(start)) * weight + current, entered into `out` (float64) as `how` says."""
    for i in range(out.size):
        u = (np.float64(row[i]) - np.float64(start[i])) * weight
        u = u + current[i]
        if how == ADD:
            out[i] = out[i] + u
        elif how == SET:
            out[i] = u
        elif how == SET_SCALED:
            out[i] = u * coefficient
        else:
            out[i] = out[i] + u * coefficient
