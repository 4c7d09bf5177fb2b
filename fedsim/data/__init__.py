"""Data sets and partitioners. Images stay uint8 and labels int until a device trains on them."""

from fedsim.data.dataset import Dataset
from fedsim.data.fashion_mnist import DataNotFoundError, fetch_fashion_mnist, find_fashion_mnist, load_fashion_mnist
from fedsim.data.partition import iid_partition
from fedsim.data.synthetic import make_synthetic


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0, synthetic_samples: int = 200) -> Dataset:
    """The data set a config names: "fashion_mnist" (real files) or "synthetic" (generated)."""
    if name == "fashion_mnist":
        return load_fashion_mnist(data_dir)
    if name == "synthetic":
        return make_synthetic(samples_per_class=synthetic_samples, seed=seed)
    raise ValueError(f"unknown data set {name!r}; use fashion_mnist or synthetic")


__all__ = [
    "Dataset",
    "DataNotFoundError",
    "fetch_fashion_mnist",
    "find_fashion_mnist",
    "iid_partition",
    "load_dataset",
    "load_fashion_mnist",
    "make_synthetic",
]
