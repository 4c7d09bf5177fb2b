"""Data sets and partitioners. Inputs keep their compact dtype and labels are int32 class ids until a
device trains on them."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.data.arrays import check_npz, has_device_ids, load_npz
from fedsim.data.dataset import DataError, Dataset
from fedsim.data.fashion_mnist import (
    DataNotFoundError,
    check_fashion_mnist,
    fetch_fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist,
)
from fedsim.data.partition import PartitionError, iid_partition, label_counts, parse_spec, partition
from fedsim.data.shakespeare import parse_name as parse_text
from fedsim.data.synthetic import expected_bytes_per_device, make_synthetic, parse_synthetic
from fedsim.data.toy import TOY_CLASSES, make_toy_images

FASHION_MNIST_TRAIN = 60_000

# Named data sets (--dataset); "synthetic:ALPHA,BETA", "shakespeare[:W]", "shakespeare_words[:W]" and an
# .npz (--data) come besides.
NAMED = ("fashion_mnist", "toy_images")
ArrayDataset = Dataset  # the name notebooks use for a data set built from their own arrays


def check_dataset_name(name: str) -> None:
    """ValueError naming the problem if `name` is no data set fedsim knows."""
    if name in NAMED or name in ("npz", "arrays"):
        return
    if name == "synthetic":
        raise ValueError(
            "--dataset synthetic needs its parameters: synthetic:ALPHA,BETA, e.g. synthetic:1,1 "
            "(FedProx's Synthetic(alpha, beta)); the 28x28 test set is now toy_images"
        )
    if parse_synthetic(name) is None and parse_text(name) is None:
        raise ValueError(
            f"--dataset {name!r}: use fashion_mnist, synthetic:ALPHA,BETA, shakespeare, shakespeare_words or "
            "toy_images, or --data FILE.npz for your own arrays"
        )


def check_devices_fit(name: str, samples: int, devices: int, min_samples: int = 1) -> None:
    """DataError unless `samples` training samples can give each of `devices` devices `min_samples`."""
    if devices * min_samples > samples:
        raise DataError(
            f"--devices {devices}: {name} has {samples} training samples, too few to give "
            f"{devices} devices {min_samples} each (--min-samples); use at most "
            f"{samples // min_samples} devices"
        )


@dataclass(frozen=True)
class DataRecipe:
    """Which data set to load and how: small and picklable, so the loading can happen in a short-lived
    worker instead of the coordinator process. `arrays` carries a data set built in Python."""

    name: str = "fashion_mnist"
    data_dir: str | None = None
    seed: int = 0
    toy_samples: int = 200
    devices: int = 1  # Synthetic(alpha, beta) generates one user per device
    path: str | None = None  # --data FILE.npz
    arrays: Dataset | None = None

    def check(self) -> None:
        """Fail now (DataNotFoundError, DataError) if the data set is not where it is looked for."""
        if self.arrays is not None:
            return
        if self.path is not None:
            check_npz(self.path)
        elif self.name == "fashion_mnist":
            check_fashion_mnist(self.data_dir)
        else:
            check_dataset_name(self.name)

    def check_fleet(
        self, devices: int, min_samples: int = 1, natural: bool = False, available_bytes: int | None = None
    ) -> None:
        """Fail now, with one line, on a fleet the data cannot make or the machine cannot hold: more
        devices than samples to give them (unless the data's own device ids make the fleet), or a
        generated data set larger than the memory there is."""
        known = {"fashion_mnist": FASHION_MNIST_TRAIN, "toy_images": self.toy_samples * TOY_CLASSES}
        samples = len(self.arrays.y_train) if self.arrays is not None else None if self.path else known.get(self.name)
        if samples is not None and not natural:
            check_devices_fit(self.name, samples, devices, min_samples)
        if self.text is not None and natural:
            from fedsim.data.shakespeare import roles

            if devices > len(roles()):
                raise DataError(
                    f"--devices {devices}: {self.name} has {len(roles())} roles, one device each; use at most "
                    f"{len(roles())} (or leave --devices out: every role)"
                )
        if parse_synthetic(self.name) is not None and self.arrays is None and self.path is None:
            import psutil

            need = devices * expected_bytes_per_device()
            have = psutil.virtual_memory().available if available_bytes is None else available_bytes
            if need > have // 2:
                raise DataError(
                    f"--devices {devices}: {self.name} generates one user per device, about "
                    f"{need / 2**30:.1f} GiB for {devices} devices; this machine has "
                    f"{have / 2**30:.1f} GiB available; use at most "
                    f"{max(1, have // 2 // expected_bytes_per_device())} devices"
                )

    @property
    def natural(self) -> bool:
        """Whether the data carries device ids (so --partition natural can use them)."""
        if self.arrays is not None:
            return self.arrays.device_train is not None
        if self.path is not None:
            return has_device_ids(self.path)
        return parse_synthetic(self.name) is not None or self.text is not None

    @property
    def text(self) -> tuple[str, int | None] | None:
        """(shakespeare or shakespeare_words, windows kept per role), for the Shakespeare data sets."""
        return None if self.arrays is not None or self.path is not None else parse_text(self.name)

    def load(self) -> Dataset:
        self.check()
        if self.arrays is not None:
            return self.arrays
        if self.path is not None:
            return load_npz(self.path)
        if self.name == "fashion_mnist":
            return load_fashion_mnist(self.data_dir)
        if self.name == "toy_images":
            return make_toy_images(samples_per_class=self.toy_samples, seed=self.seed)
        if self.text is not None:
            from fedsim.data import shakespeare

            # every role's windows (the partitioners pool them), or a seeded draw of `devices` roles
            return shakespeare.load(self.name, self.seed, self.devices or None)
        spec = parse_synthetic(self.name)
        assert spec is not None  # check() accepted the name
        return make_synthetic(*spec, self.devices, self.seed)


__all__ = [
    "ArrayDataset",
    "DataError",
    "DataNotFoundError",
    "DataRecipe",
    "Dataset",
    "PartitionError",
    "check_dataset_name",
    "check_devices_fit",
    "fetch_fashion_mnist",
    "find_fashion_mnist",
    "iid_partition",
    "label_counts",
    "load_fashion_mnist",
    "load_npz",
    "make_synthetic",
    "make_toy_images",
    "parse_spec",
    "partition",
]
