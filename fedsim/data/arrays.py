"""The user's own data: an .npz file of arrays (`--data FILE.npz`)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from fedsim.data.dataset import DataError, Dataset

REQUIRED = ("x_train", "y_train", "x_test", "y_test")
OPTIONAL = ("device_train", "device_test", "num_classes")


def check_npz(path: str | os.PathLike[str]) -> None:
    """Fail now, in one line, if `path` is not an .npz holding the four required arrays (reads only
    the archive's index)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--data {p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as npz:
            keys = set(npz.files)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"--data {p}: not a readable .npz ({type(e).__name__}: {e})") from None
    missing = [k for k in REQUIRED if k not in keys]
    if missing:
        raise DataError(
            f"--data {p}: missing array(s) {', '.join(missing)}; an .npz needs "
            f"{', '.join(REQUIRED)} (optional: {', '.join(OPTIONAL)})"
        )
    unknown = sorted(keys - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise DataError(f"--data {p}: unknown array(s) {', '.join(unknown)}; known: {', '.join(REQUIRED + OPTIONAL)}")


def has_device_ids(path: str | os.PathLike[str]) -> bool:
    with np.load(path, allow_pickle=False) as npz:
        return "device_train" in npz.files


def load_npz(path: str | os.PathLike[str]) -> Dataset:
    check_npz(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as e:  # object arrays need pickle, which a data file must not need
        raise DataError(f"--data {path}: {e}") from None
    classes = arrays.pop("num_classes", None)
    if classes is not None and (classes.ndim != 0 or not np.issubdtype(classes.dtype, np.integer)):
        raise DataError(
            f"--data {path}: num_classes must be one integer, got a {classes.dtype} array of shape {classes.shape}"
        )
    return Dataset(name=Path(path).name, num_classes=None if classes is None else int(classes), **arrays)
