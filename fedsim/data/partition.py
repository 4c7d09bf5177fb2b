"""Seeded partitioners: training-set indices -> one index array per device."""

from __future__ import annotations

import numpy as np


def iid_partition(num_samples: int, num_devices: int, seed: int) -> list[np.ndarray]:
    """Shuffle with the seed and cut into num_devices near-equal shards (sizes differ by <= 1).

    With more devices than samples (a 100,000-phone fleet on 60,000 images) every device still gets
    one sample: the shuffled order is repeated, each pass a fresh permutation, so every sample is
    held by at most ceil(devices / samples) devices and no device is empty.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    if num_samples < 1:
        raise ValueError("no training samples to partition")
    rng = np.random.default_rng([seed, 0x5EED])
    passes = -(-num_devices // num_samples)  # ceil: 1 unless devices outnumber samples
    order = np.concatenate([rng.permutation(num_samples) for _ in range(passes)])
    if passes > 1:
        order = order[:num_devices]
    return [np.sort(s) for s in np.array_split(order, num_devices)]
