"""Data sets and partitioners. Images stay uint8 and labels int until a device trains on them."""

from dataclasses import dataclass

from fedsim.data.dataset import Dataset
from fedsim.data.fashion_mnist import (
    DataError, DataNotFoundError, check_fashion_mnist, fetch_fashion_mnist, find_fashion_mnist, load_fashion_mnist,
)
from fedsim.data.partition import PartitionError, iid_partition, label_counts, parse_spec, partition
from fedsim.data.synthetic import make_synthetic


@dataclass(frozen=True)
class DataRecipe:
    """Which data set to load and how: small and picklable, so the loading can happen in a short-lived
    worker instead of the coordinator process."""

    name: str = "fashion_mnist"
    data_dir: str | None = None
    seed: int = 0
    synthetic_samples: int = 200

    def check(self) -> None:
        """Fail now (DataNotFoundError) if the data set is not where it is looked for."""
        if self.name == "fashion_mnist":
            check_fashion_mnist(self.data_dir)
        elif self.name != "synthetic":
            raise ValueError(f"unknown data set {self.name!r}; use fashion_mnist or synthetic")

    def load(self) -> Dataset:
        self.check()
        if self.name == "fashion_mnist":
            return load_fashion_mnist(self.data_dir)
        return make_synthetic(samples_per_class=self.synthetic_samples, seed=self.seed)


__all__ = [
    "DataError",
    "DataRecipe",
    "Dataset",
    "DataNotFoundError",
    "fetch_fashion_mnist",
    "find_fashion_mnist",
    "PartitionError",
    "iid_partition",
    "label_counts",
    "parse_spec",
    "partition",
    "load_fashion_mnist",
    "make_synthetic",
]
