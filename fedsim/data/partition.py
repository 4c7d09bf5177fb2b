"""Seeded partitioners: training-set indices -> one index array per device."""

from __future__ import annotations

import numpy as np


def iid_partition(num_samples: int, num_devices: int, seed: int) -> list[np.ndarray]:
    """Shuffle once with the seed and cut into num_devices near-equal shards (sizes differ by <= 1)."""
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if num_samples < num_devices:
        raise ValueError(
            f"{num_samples} training samples cannot give each of {num_devices} devices one; "
            "use fewer --devices or a larger data set"
        )
    order = np.random.default_rng([seed, 0x5EED]).permutation(num_samples)
    return [np.sort(s) for s in np.array_split(order, num_devices)]
