"""The settings of the data: which data set, and how it is split over the devices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedsim.core.settings import ConfigError, Section, need, setting

if TYPE_CHECKING:
    from fedsim.data import DataRecipe


@dataclass(frozen=True)
class DataSettings(Section):
    section = "data"
    # fashion_mnist (real, from the Debian package), synthetic:ALPHA,BETA (FedProx's Synthetic(alpha,
    # beta), generated from the seed, one user per device) or toy_images (small, generated; tests, demos)
    dataset: str = setting(
        "fashion_mnist",
        "fashion_mnist, synthetic:ALPHA,BETA (FedProx), shakespeare[:W] (next character, one device per role), "
        "shakespeare_words[:W] (next word) or toy_images",
    )
    # your own arrays; the dataset is then recorded as "npz"
    data: str | None = setting(
        None, "your own data: an .npz with x_train, y_train, x_test, y_test (optional device_train, device_test)"
    )
    data_dir: str | None = setting(
        None, "folder with the Fashion-MNIST IDX .gz files (default: $FEDSIM_DATA, then the standard places)"
    )
    # None = natural for synthetic:ALPHA,BETA (one generated user per device), else iid
    partition: str | None = setting(
        None,
        "how the training set is split: iid, natural, dirichlet:A, shards:K, classes:K, quantity:S "
        "(default: natural for synthetic and shakespeare, else iid)",
    )
    min_samples: int = setting(1, "fewest samples any device may hold", least=1)
    # the selected devices then score every new global model on it: how non-IID fairness is read
    device_test_fraction: float = setting(
        0.0, "share of each device's data kept as its own test split (per-device accuracy)", least=0, below=1
    )
    toy_samples: int = setting(
        200,
        "samples per class of the toy_images data set",
        least=1,
        most=100_000,
        why="(a million images of 10 classes would need gigabytes; use --dataset fashion_mnist or your own)",
    )

    def __post_init__(self) -> None:
        # Resolved once, so config.json records what ran: an .npz is the data set.
        if self.data is not None and self.dataset == "fashion_mnist":
            object.__setattr__(self, "dataset", "npz")
        super().__post_init__()

    @property
    def partition_spec(self) -> str:
        """--partition with its mode spelled out (classes:2 -> classes:2:first-deterministic), or the one
        the data set implies: natural for synthetic:ALPHA,BETA (one generated user per device), iid
        otherwise. A run records this resolved value."""
        from fedsim.data.partition import resolve_spec

        if self.partition is not None:
            return resolve_spec(self.partition)
        return "natural" if self.dataset.startswith(("synthetic:", "shakespeare")) else "iid"

    def recipe(self, seed: int, devices: int, arrays: Any = None) -> DataRecipe:
        """What to load for a run of `devices` devices (`arrays`: a data set built in Python). The
        Shakespeare data sets give `devices` roles to a natural partition, and every role's windows
        to the others."""
        from fedsim.data import DataRecipe

        if self.dataset.startswith("shakespeare") and self.partition_spec != "natural":
            devices = 0
        return DataRecipe(self.dataset, self.data_dir, seed, self.toy_samples, devices, self.data, arrays)

    def check(self) -> None:
        from fedsim.data import check_dataset_name
        from fedsim.data.partition import PartitionError, parse_spec

        try:
            check_dataset_name(self.dataset)
            parse_spec(self.partition_spec)
        except (PartitionError, ValueError) as e:
            raise ConfigError(str(e)) from None
        if self.data is not None:
            need(self.data.endswith(".npz"), "data", "must be an .npz file", self.data)
            need(
                self.dataset == "npz",
                "dataset",
                "must be left out with --data (the .npz is the data set)",
                self.dataset,
            )
        need(self.dataset != "npz" or self.data is not None, "dataset", "npz needs --data FILE.npz", self.dataset)
