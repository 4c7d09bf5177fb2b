"""Synthetic(alpha, beta): the federated logistic-regression benchmark of the FedProx paper.

Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020), section 5.1 and the
paper's generator script. Device k draws its own model W_k ~ N(u_k, 1), b_k ~ N(u_k, 1) with
u_k ~ N(0, alpha) (how much the devices' models differ), and its own features x ~ N(v_k, Sigma) with
v_k ~ N(B_k, 1), B_k ~ N(0, beta) (how much their inputs differ), Sigma diagonal with
Sigma_jj = j^-1.2; labels are argmax(softmax(W_k x + b_k)). Sizes follow the paper's power law:
lognormal(4, 2) + 50 samples per device; each device keeps 10% of its samples for testing (the
test set is the union of those, and each device's share is its own test split).

Generated from the seed (numpy Philox streams), never downloaded. 60 features, 10 classes.
"""

from __future__ import annotations

import numpy as np

from fedsim.data.dataset import Dataset

DIMENSION = 60
CLASSES = 10
TEST_SHARE = 0.1  # the paper's 90/10 split per device


def parse_synthetic(name: str) -> tuple[float, float] | None:
    """ "synthetic:1,1" -> (1.0, 1.0); None if `name` is not a synthetic spec; ValueError if malformed."""
    kind, sep, arg = name.partition(":")
    if kind != "synthetic":
        return None
    parts = arg.split(",") if sep else []
    try:
        alpha, beta = (float(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"--dataset {name!r}: write synthetic:ALPHA,BETA, e.g. synthetic:1,1 (FedProx's Synthetic(alpha, beta))"
        ) from None
    if not (alpha >= 0 and beta >= 0):
        raise ValueError(f"--dataset {name!r}: alpha and beta must be >= 0")
    return alpha, beta


def expected_bytes_per_device() -> int:
    """What one generated user costs, on average: the paper's sizes (mean e^(4 + 2^2/2) + 50 samples),
    60 float32 features, an int32 label and an int64 device id each, plus the same again while the
    generator concatenates them."""
    samples = np.exp(4 + 2**2 / 2) + 50
    return int(2 * samples * (DIMENSION * 4 + 4 + 8))


def make_synthetic(
    alpha: float, beta: float, num_devices: int, seed: int = 0, sizes: np.ndarray | None = None
) -> Dataset:
    """One generated user per device, carried as device ids (a natural partition).

    `sizes`: samples per device (before the test split) instead of the paper's power law.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    rng = np.random.default_rng(np.random.Philox(key=[seed, 0x5F3D]))
    if sizes is None:
        sizes = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
    sizes = np.asarray(sizes, dtype=np.int64)
    model_mean = rng.normal(0, alpha, num_devices)  # u_k: the same mean for W_k and b_k
    feature_mean = rng.normal(0, beta, num_devices)  # B_k
    std = np.power(np.arange(1, DIMENSION + 1, dtype=np.float64), -1.2 / 2)  # sqrt of Sigma's diagonal
    xs, ys, owners = [], [], []
    for k in range(num_devices):
        v = rng.normal(feature_mean[k], 1, DIMENSION)
        w = rng.normal(model_mean[k], 1, (DIMENSION, CLASSES))
        b = rng.normal(model_mean[k], 1, CLASSES)
        x = v + rng.standard_normal((int(sizes[k]), DIMENSION)) * std
        xs.append(x.astype(np.float32))
        ys.append(np.argmax(x @ w + b, axis=1).astype(np.int32))  # softmax keeps the argmax
        owners.append(np.full(len(x), k, np.int64))
    x, y, owner = np.concatenate(xs), np.concatenate(ys), np.concatenate(owners)
    # Each device's last 10% (at least one sample) is its test share, as in the paper's split.
    test = np.zeros(len(y), bool)
    start = 0
    for size in sizes:
        n_test = max(1, int(TEST_SHARE * size))
        test[start + size - n_test : start + size] = True
        start += size
    name = f"synthetic:{alpha:g},{beta:g}"
    return Dataset(
        x[~test],
        y[~test],
        x[test],
        y[test],
        name=name,
        num_classes=CLASSES,
        device_train=owner[~test],
        device_test=owner[test],
    )
