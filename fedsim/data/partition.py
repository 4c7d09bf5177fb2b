"""Seeded partitioners: training labels -> one index array per device.

Specs, as in --partition and TOML:
  iid            shuffle and cut into near-equal shards
  dirichlet:A    per-class Dirichlet(A) label skew (NIID-Bench / flwr-datasets meaning)
  shards:K       McMahan et al.: sort by label, cut into K*N equal shards, give each device K at random
  classes:K      each device sees exactly K labels; a label's samples are split among its devices
  quantity:S     IID labels, device sizes drawn log-normal with sigma S
  natural        the device ids the data carries (Synthetic(alpha, beta), an .npz with device_train)
Every device gets at least `min_samples` samples: Dirichlet draws are repeated until that holds;
otherwise the partition fails naming the devices.
"""

from __future__ import annotations

import numpy as np

MAX_DRAWS = 1000  # Dirichlet redraws before giving up on min_samples


class PartitionError(ValueError):
    """A partition spec is malformed, or cannot give every device its minimum."""


def parse_spec(spec: str) -> tuple[str, float | None]:
    """ "dirichlet:0.3" -> ("dirichlet", 0.3); raises PartitionError naming the problem."""
    kind, _, arg = spec.partition(":")
    kinds = {"iid": None, "natural": None, "dirichlet": float, "shards": int, "classes": int, "quantity": float}
    if kind not in kinds:
        raise PartitionError(
            f"--partition {spec!r}: unknown kind {kind!r}; use iid, natural, dirichlet:A, shards:K, "
            "classes:K or quantity:S"
        )
    cast = kinds[kind]
    if cast is None:
        if arg:
            raise PartitionError(f"--partition {spec!r}: {kind} takes no argument")
        return kind, None
    try:
        value = cast(arg)
    except ValueError:
        raise PartitionError(
            f"--partition {spec!r}: {kind} needs a {cast.__name__} after ':', e.g. {kind}:{2 if cast is int else 0.5}"
        ) from None
    if value <= 0:
        raise PartitionError(f"--partition {spec!r}: the {kind} argument must be positive")
    return kind, value


def partition(
    labels: np.ndarray,
    num_devices: int,
    spec: str = "iid",
    seed: int = 0,
    min_samples: int = 1,
    owners: np.ndarray | None = None,
) -> list[np.ndarray]:
    """One sorted index array per device. `owners`: the device id of each sample, for natural."""
    kind, arg = parse_spec(spec)
    labels = np.asarray(labels)
    if num_devices < 1:
        raise PartitionError(f"num_devices must be >= 1, got {num_devices}")
    rng = np.random.default_rng([seed, 0x9A27])
    value = float(arg) if arg is not None else 0.0
    if kind == "iid":
        shards = iid_partition(len(labels), num_devices, seed)
    elif kind == "natural":
        shards = natural_partition(owners, num_devices)
    elif kind == "dirichlet":
        shards = _dirichlet(labels, num_devices, value, rng, min_samples)
    elif kind == "shards":
        shards = _shards(labels, num_devices, int(value), rng)
    elif kind == "classes":
        shards = _classes(labels, num_devices, int(value), rng)
    else:
        shards = _quantity(len(labels), num_devices, value, rng, min_samples)
    small = [d for d, s in enumerate(shards) if len(s) < min_samples]
    if small:
        shown = ", ".join(map(str, small[:10])) + (" ..." if len(small) > 10 else "")
        raise PartitionError(
            f"--partition {spec} leaves {len(small)} device(s) below --min-samples {min_samples} "
            f"(devices {shown}); use fewer --devices, a larger argument, or a lower --min-samples"
        )
    return [np.sort(s) for s in shards]


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


def natural_partition(owners: np.ndarray | None, num_devices: int, what: str = "device_train") -> list[np.ndarray]:
    """Device d holds the samples of the d-th smallest id in `owners` (ids may be any integers)."""
    if owners is None:
        raise PartitionError(
            "--partition natural needs data that carries device ids (synthetic:ALPHA,BETA, or an "
            ".npz / ArrayDataset with device_train); use iid, dirichlet:A, ... for this data set"
        )
    ids, inverse = np.unique(owners, return_inverse=True)
    if len(ids) != num_devices:
        raise PartitionError(
            f"--partition natural: the data's {what} names {len(ids)} devices but --devices is "
            f"{num_devices}; set --devices {len(ids)}"
        )
    return group_indices(inverse, len(ids))


def group_indices(group: np.ndarray, n: int) -> list[np.ndarray]:
    """[indices i with group[i] == g for g in range(n)], each in ascending order."""
    order = np.argsort(group, kind="stable")
    return np.split(order, np.cumsum(np.bincount(group, minlength=n))[:-1])


def _dirichlet(
    labels: np.ndarray, n: int, alpha: float, rng: np.random.Generator, min_samples: int
) -> list[np.ndarray]:
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    for _ in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for idx in by_class:
            p = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for d, piece in enumerate(np.split(idx, cuts)):
                parts[d].append(piece)
        shards = [np.concatenate(p) for p in parts]
        if min(len(s) for s in shards) >= min_samples:
            return shards
    return shards  # the caller names the devices that stayed below min_samples


def _shards(labels: np.ndarray, n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = _sorted_by_label(labels, rng)
    pieces = np.array_split(order, k * n)
    owner = rng.permutation(k * n).reshape(n, k)
    return [np.concatenate([pieces[i] for i in row]) for row in owner]


def _sorted_by_label(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices sorted by label, shuffled within each label."""
    shuffled = rng.permutation(len(labels))
    return shuffled[np.argsort(labels[shuffled], kind="stable")]


def _classes(labels: np.ndarray, n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(labels)
    if k > len(classes):
        raise PartitionError(f"--partition classes:{k}: the data set has only {len(classes)} labels")
    # Device d holds labels perm[(d*k + j) % C]: exactly k labels each, spread as evenly as possible.
    perm = rng.permutation(classes)
    held = [[perm[(d * k + j) % len(classes)] for j in range(k)] for d in range(n)]
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for d, cs in enumerate(held):
        for c in cs:
            holders[int(c)].append(d)
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c, devices in holders.items():
        if devices:
            idx = rng.permutation(np.flatnonzero(labels == c))
            for d, piece in zip(devices, np.array_split(idx, len(devices))):
                parts[d].append(piece)
    return [np.concatenate(p) if p else np.zeros(0, dtype=np.int64) for p in parts]


def _quantity(num_samples: int, n: int, sigma: float, rng: np.random.Generator, min_samples: int) -> list[np.ndarray]:
    if n * min_samples > num_samples:
        raise PartitionError(f"{n} devices x --min-samples {min_samples} exceeds the {num_samples} training samples")
    weights = rng.lognormal(0.0, sigma, size=n)
    spare = num_samples - n * min_samples  # every device first gets its minimum, the rest by weight
    extra = np.floor(weights / weights.sum() * spare).astype(int)
    extra[np.argsort(-weights)[: spare - extra.sum()]] += 1
    sizes = extra + min_samples
    order = rng.permutation(num_samples)
    return list(np.split(order, np.cumsum(sizes)[:-1]))


def label_counts(labels: np.ndarray, shards: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(devices, classes) matrix of how many samples of each label every device holds."""
    return (
        np.stack([np.bincount(labels[s], minlength=num_classes) for s in shards])
        if shards
        else np.zeros((0, num_classes), int)
    )
