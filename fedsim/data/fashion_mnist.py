"""Fashion-MNIST from the standard IDX gzip files. Nothing downloads unless asked (`fedsim data fetch`)."""

from __future__ import annotations

import gzip
import os
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from fedsim.data.dataset import DataError, Dataset

FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE = Path("~/.keras/datasets/fashion-mnist")
# The same mirror Keras' fashion_mnist.load_data() downloads from.
MIRROR = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"


class DataNotFoundError(FileNotFoundError):
    """The data set is in none of the places fedsim looks."""


def candidate_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: the given folder (or $FEDSIM_DATA), the Debian
    package's folder, the Keras cache."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    dirs = []
    if os.environ.get("FEDSIM_DATA"):
        dirs.append(Path(os.environ["FEDSIM_DATA"]).expanduser())
    return dirs + [DEBIAN_DIR, KERAS_CACHE.expanduser()]


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path:
    dirs = candidate_dirs(data_dir)
    for d in dirs:
        if all((d / f).is_file() for f in FILES.values()):
            return d
    looked = ", ".join(str(d) for d in dirs)
    raise DataNotFoundError(
        f"Fashion-MNIST not found in {looked} (need {', '.join(FILES.values())}); "
        "install the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist), "
        "run `fedsim data fetch` where a network exists, or pass --data-dir"
    )


def check_idx(path: Path) -> tuple[int, ...]:
    """Validate an IDX gzip file without decompressing it all: its header must be an unsigned-byte
    IDX header, and gzip's trailer (uncompressed size mod 2**32) must match the size the header
    implies, which catches truncated downloads. Returns the shape."""
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise DataError(f"{path}: too short for an IDX header; re-install or re-download it")
            zero, dtype_code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or dtype_code != 0x08:
                raise DataError(f"{path}: not an unsigned-byte IDX file; re-install or re-download it")
            shape = struct.unpack(f">{ndim}I", f.read(4 * ndim))
        with open(path, "rb") as raw:
            raw.seek(-4, os.SEEK_END)
            (isize,) = struct.unpack("<I", raw.read(4))
    except (OSError, EOFError, struct.error) as e:
        raise DataError(f"{path}: not a readable gzip IDX file ({e}); re-install or re-download it") from None
    expected = (4 + 4 * len(shape) + int(np.prod(shape))) % 2**32
    if isize != expected:
        raise DataError(
            f"{path}: truncated or damaged (holds {isize} bytes, its header implies {expected}); "
            "re-install or re-download it"
        )
    return shape


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzip) -> uint8 array of the shape its header gives."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # a damaged deflate stream is a zlib.error
        raise DataError(f"{path}: not a readable gzip IDX file ({e}); re-install or re-download it") from None
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header; re-install or re-download it")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {body.size} bytes; re-install or re-download it")
    return body.reshape(shape)


def check_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> dict[str, tuple[int, ...]]:
    """Find the data set and validate its four files cheaply; their shapes by key."""
    d = find_fashion_mnist(data_dir)
    shapes = {key: check_idx(d / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        if shapes[f"x_{split}"][:1] != shapes[f"y_{split}"][:1]:
            raise DataError(f"{d}: {shapes[f'x_{split}'][0]} {split} images but {shapes[f'y_{split}'][0]} labels")
    return shapes


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    d = find_fashion_mnist(data_dir)
    arrays = {key: read_idx(d / name) for key, name in FILES.items()}
    return Dataset(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], "fashion_mnist", 10)


def fetch_fashion_mnist(dest: str | os.PathLike[str] | None = None, mirror: str = MIRROR) -> Path:
    """Download the four files into the Keras cache (or dest). Only ever called on request; a copy
    fedsim can already use (the Debian package's) is said, and nothing downloaded. Offline: one line,
    and no empty folder left behind."""
    if dest is None:
        try:
            have = find_fashion_mnist()
        except DataNotFoundError:
            have = None
        if have is not None:
            print(f"fedsim: Fashion-MNIST is already in {have}; nothing to download")
            return have
    target = Path(dest).expanduser() if dest else KERAS_CACHE.expanduser()
    made = [p for p in (target, *target.parents) if not p.exists()]
    target.mkdir(parents=True, exist_ok=True)
    try:
        for name in FILES.values():
            path = target / name
            if path.is_file():
                continue
            tmp = path.with_suffix(".part")
            try:
                urllib.request.urlretrieve(mirror + name, tmp)
            except (OSError, ValueError) as e:  # urllib's URLError is an OSError
                tmp.unlink(missing_ok=True)
                reason = getattr(e, "reason", e)
                raise DataNotFoundError(
                    f"cannot download {mirror + name} ({reason}); without a network, install the Debian package "
                    "dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist) or pass --data-dir"
                ) from None
            tmp.rename(path)
    finally:
        for p in made:  # folders this call made and left empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    find_fashion_mnist(target)
    return target
