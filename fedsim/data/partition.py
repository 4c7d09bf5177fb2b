"""Seeded partitioners: training labels -> one index array per device.

Specs, as in --partition and TOML (each as its source defines it; where fedsim differs, it says so):
  iid                  shuffle and cut into near-equal shards
  dirichlet:A          per-class label skew (NIID-Bench's "noniid-labeldir", Li et al. 2022; Flower
                       Datasets' DirichletPartitioner): each label's samples are split over the devices
                       by proportions drawn from Dir(A). Differs from NIID-Bench: no rebalancing of
                       devices that already hold N / devices samples, and the draw is repeated until
                       every device holds --min-samples (NIID-Bench: 10); a draw that leaves many
                       devices short fails at once, naming dirichlet:A:device
  dirichlet:A:device   per-device label skew (Hsu et al. 2019, "Measuring the effects of non-identical
                       data distribution"): each device draws its label mix from Dir(A * p), p the
                       global label mix, and fills its equal share from the labels' pools (a label
                       that runs dry is left out and the rest renormalised). Succeeds at any fleet
                       size; with more devices than samples the pools are refilled, as iid reuses samples
  shards:K             McMahan et al. 2017: sort by label, cut into K x devices equal shards, give each
                       device K at random (MNIST: 200 shards of 300 for 100 devices, K = 2)
  classes:K[:MODE]     each device holds exactly K labels; each label's samples are split equally
                       among the devices that hold it. MODE (Flower Datasets' PathologicalPartitioner):
                         first-deterministic  (default) device i holds label i % C and K - 1 others
                                              drawn at random: NIID-Bench's "#C=k" (Li et al. 2022)
                         random               K labels drawn at random per device
                         deterministic        device i holds labels (i + j) % C, j < K
                         cyclic               fedsim before 0.3: device d holds perm[(d K + j) % C]
                                              (disjoint label groups); runs made then resume with it
  quantity:S           IID labels, device sizes log-normal(0, S) (the quantity skew of LEAF-style
                       fleets; NIID-Bench's "iid-diff-quantity" draws sizes from Dir(beta) instead)
  natural              the device ids the data carries (Synthetic(alpha, beta), an .npz with device_train)
Every device gets at least `min_samples` samples; otherwise the partition fails naming the devices.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import numpy as np

MAX_DRAWS = 1000  # per-class Dirichlet redraws before giving up on min_samples
MAX_SECONDS = 5.0  # ... or after this long
CLASS_MODES = ("first-deterministic", "random", "deterministic", "cyclic")
DIRICHLET_MODES = ("class", "device")


class PartitionError(ValueError):
    """A partition spec is malformed, or cannot give every device its minimum."""


class Spec(NamedTuple):
    kind: str
    value: float | None = None
    mode: str | None = None

    def __str__(self) -> str:
        if self.value is None:
            return self.kind
        number = str(int(self.value)) if self.kind in ("shards", "classes") else f"{self.value:g}"
        return f"{self.kind}:{number}" + (f":{self.mode}" if self.mode and self.mode != "class" else "")


def parse_spec(spec: str) -> Spec:
    """ "dirichlet:0.3" -> Spec("dirichlet", 0.3, "class"); "classes:2" -> Spec("classes", 2, the default
    mode); raises PartitionError naming the problem."""
    kind, _, rest = spec.partition(":")
    arg, _, mode = rest.partition(":")
    kinds = {"iid": None, "natural": None, "dirichlet": float, "shards": int, "classes": int, "quantity": float}
    if kind not in kinds:
        raise PartitionError(
            f"--partition {spec!r}: unknown kind {kind!r}; use iid, natural, dirichlet:A[:device], shards:K, "
            f"classes:K[:{'|'.join(CLASS_MODES)}] or quantity:S"
        )
    cast = kinds[kind]
    if cast is None:
        if rest:
            raise PartitionError(f"--partition {spec!r}: {kind} takes no argument")
        return Spec(kind)
    try:
        value = cast(arg)
    except ValueError:
        example = f"{kind}:{2 if cast is int else 0.5}"
        raise PartitionError(
            f"--partition {spec!r}: {kind} needs a {cast.__name__} after ':', e.g. {example}"
        ) from None
    if not value > 0 or not np.isfinite(value):
        raise PartitionError(f"--partition {spec!r}: the {kind} argument must be a positive number")
    modes = {"classes": CLASS_MODES, "dirichlet": DIRICHLET_MODES}.get(kind, ())
    if mode and mode not in modes:
        allowed = f"one of {', '.join(modes)}" if modes else "none"
        raise PartitionError(f"--partition {spec!r}: {kind}'s mode must be {allowed}, got {mode!r}")
    return Spec(kind, float(value), mode or (modes[0] if modes else None))


def resolve_spec(spec: str) -> str:
    """The spec as a run records it, with its mode spelled out (classes:2 -> classes:2:first-deterministic)."""
    parsed = parse_spec(spec)
    return str(parsed)


def partition(
    labels: np.ndarray,
    num_devices: int,
    spec: str = "iid",
    seed: int = 0,
    min_samples: int = 1,
    owners: np.ndarray | None = None,
) -> list[np.ndarray]:
    """One sorted index array per device. `owners`: the device id of each sample, for natural."""
    kind, value, mode = parse_spec(spec)
    labels = np.asarray(labels)
    if num_devices < 1:
        raise PartitionError(f"num_devices must be >= 1, got {num_devices}")
    rng = np.random.default_rng([seed, 0x9A27])
    arg = float(value) if value is not None else 0.0
    if kind == "iid":
        shards = iid_partition(len(labels), num_devices, seed)
    elif kind == "natural":
        shards = natural_partition(owners, num_devices)
    elif kind == "dirichlet" and mode == "device":
        shards = _dirichlet_devices(labels, num_devices, arg, rng, min_samples)
    elif kind == "dirichlet":
        shards = _dirichlet(labels, num_devices, arg, rng, min_samples, spec)
    elif kind == "shards":
        shards = _shards(labels, num_devices, int(arg), rng)
    elif kind == "classes":
        shards = _classes(labels, num_devices, int(arg), rng, mode or CLASS_MODES[0])
    else:
        shards = _quantity(len(labels), num_devices, arg, rng, min_samples)
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
    labels: np.ndarray, n: int, alpha: float, rng: np.random.Generator, min_samples: int, spec: str
) -> list[np.ndarray]:
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    began = time.monotonic()
    shards: list[np.ndarray] = []
    for draw in range(MAX_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for idx in by_class:
            p = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(int)
            for d, piece in enumerate(np.split(idx, cuts)):
                parts[d].append(piece)
        shards = [np.concatenate(p) for p in parts]
        short = sum(len(s) < min_samples for s in shards)
        if not short:
            return shards
        # A draw that leaves more than a few devices short will not be followed by one that leaves none
        # (each device's chance is independent): say so now instead of after minutes of redraws.
        if short > 3 or time.monotonic() - began > MAX_SECONDS:
            raise PartitionError(
                f"--partition {spec}: the per-class Dirichlet split left {short} of {n} devices below "
                f"--min-samples {min_samples} (after {draw + 1} draw(s)); at this alpha and fleet size it "
                f"rarely fills every device. Use --partition dirichlet:{alpha:g}:device (each device draws "
                "its own label mix and gets an equal share: works at any size), a larger alpha, or fewer devices"
            )
    return shards  # the caller names the devices that stayed below min_samples


def _dirichlet_devices(
    labels: np.ndarray, n: int, alpha: float, rng: np.random.Generator, min_samples: int
) -> list[np.ndarray]:
    """Hsu et al. 2019: device d's label mix q_d ~ Dir(alpha * p); it fills its equal share from the
    labels' pools by q_d renormalised over the labels that have samples left. Pools are refilled (a
    fresh permutation) when every one is empty, so more devices than samples still works."""
    classes, counts = np.unique(labels, return_counts=True)
    prior = counts / counts.sum()
    total = max(len(labels), n * min_samples)
    sizes = np.full(n, total // n, np.int64)
    sizes[: total % n] += 1
    pools = [np.flatnonzero(labels == c) for c in classes]
    order = [rng.permutation(p) for p in pools]
    left = np.array([len(p) for p in pools], np.int64)
    mixes = rng.dirichlet(alpha * prior, size=n)
    degenerate = ~np.isfinite(mixes).all(axis=1) | (mixes.sum(axis=1) <= 0)  # a tiny alpha can underflow
    mixes[degenerate] = np.eye(len(classes))[rng.choice(len(classes), int(degenerate.sum()), p=prior)]
    shards = []
    for d in rng.permutation(n).tolist():  # devices fill in a seeded order, so none is always last
        need, pieces = int(sizes[d]), []
        while need > 0:
            if not left.any():  # every pool is empty: a new pass over the samples
                order = [rng.permutation(p) for p in pools]
                left = np.array([len(p) for p in pools], np.int64)
            weights = mixes[d] * (left > 0)
            weights = weights / weights.sum() if weights.sum() > 0 else (left > 0) / (left > 0).sum()
            take = np.minimum(rng.multinomial(need, weights), left)
            for c in np.flatnonzero(take):
                start = len(order[c]) - left[c]
                pieces.append(order[c][start : start + take[c]])
            left -= take
            need -= int(take.sum())
        shards.append((d, np.concatenate(pieces) if pieces else np.zeros(0, np.int64)))
    shards.sort(key=lambda t: t[0])
    return [s for _, s in shards]


def _shards(labels: np.ndarray, n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = _sorted_by_label(labels, rng)
    pieces = np.array_split(order, k * n)
    owner = rng.permutation(k * n).reshape(n, k)
    return [np.concatenate([pieces[i] for i in row]) for row in owner]


def _sorted_by_label(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices sorted by label, shuffled within each label."""
    shuffled = rng.permutation(len(labels))
    return shuffled[np.argsort(labels[shuffled], kind="stable")]


def class_assignment(num_classes: int, n: int, k: int, rng: np.random.Generator, mode: str) -> list[list[int]]:
    """The label positions (into the sorted labels) each device holds, by `mode` (see the module)."""
    if mode == "first-deterministic":
        held = []
        for d in range(n):
            mine = [d % num_classes]
            while len(mine) < k:
                c = int(rng.integers(num_classes))
                if c not in mine:
                    mine.append(c)
            held.append(mine)
        return held
    if mode == "random":
        return [sorted(rng.choice(num_classes, size=k, replace=False).tolist()) for _ in range(n)]
    if mode == "deterministic":
        return [[(d + j) % num_classes for j in range(k)] for d in range(n)]
    perm = rng.permutation(num_classes)  # cyclic: fedsim before 0.3
    return [[int(perm[(d * k + j) % num_classes]) for j in range(k)] for d in range(n)]


def _classes(labels: np.ndarray, n: int, k: int, rng: np.random.Generator, mode: str) -> list[np.ndarray]:
    classes = np.unique(labels)
    if k > len(classes):
        raise PartitionError(f"--partition classes:{k}: the data set has only {len(classes)} labels")
    held = class_assignment(len(classes), n, k, rng, mode)
    holders: dict[int, list[int]] = {c: [] for c in range(len(classes))}
    for d, cs in enumerate(held):
        for c in cs:
            holders[c].append(d)
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c, devices in holders.items():  # each label's samples split equally among its holders, in id order
        if devices:
            idx = rng.permutation(np.flatnonzero(labels == classes[c]))
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
    if not shards:
        return np.zeros((0, num_classes), int)
    return np.stack([np.bincount(labels[s], minlength=num_classes) for s in shards])
