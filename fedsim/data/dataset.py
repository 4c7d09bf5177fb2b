"""The in-memory data set every part of fedsim shares, and its checks."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsim.core.task import Task, TaskError, kind_of

MAX_CLASSES = 100_000  # the model's output layer grows with it: more would take gigabytes per device


class DataError(ValueError):
    """Data that is there but cannot be used (unreadable file, mismatched arrays, bad labels, NaN...)."""


def _array(value: Any, what: str) -> np.ndarray:
    """numpy arrays, lists and pandas objects (DataFrame -> its values) as one numpy array."""
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # ragged lists and the like
        raise DataError(f"{what} is not an array ({type(e).__name__}: {e})") from None


@dataclass(frozen=True)
class Dataset:
    """Train and test inputs with integer class labels, and optionally the device each sample
    belongs to (a natural partition).

    Inputs keep their compact dtype (uint8 pixels stay uint8: every host holds its devices' shards
    for the whole run); float features are stored as float32, integer tokens as int32, labels as
    int32 class ids. The task (shape, kind, classes) is taken from the arrays.

    `fedsim.ArrayDataset(x_train, y_train, x_test, y_test, ...)` is this class: numpy arrays, lists
    or pandas objects are accepted and checked, each problem reported in one line.
    """

    x_train: Any
    y_train: Any
    x_test: Any
    y_test: Any
    name: str = "arrays"
    num_classes: int | None = None
    # the device each sample belongs to, for --partition natural (any integer ids)
    device_train: Any = None
    device_test: Any = None
    # tokens: the vocabulary (default: the largest id + 1), and the classes accuracy does not count
    vocab_size: int | None = None
    unscored: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen: set once, here
        arrays = {k: _array(getattr(self, k), k) for k in ("x_train", "y_train", "x_test", "y_test")}
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if len(x) != len(y):
                raise DataError(f"{self.name}: x_{split} has {len(x)} samples but y_{split} has {len(y)} labels")
            if y.ndim != 1:
                raise DataError(f"{self.name}: y_{split} must be one class id per sample, got shape {y.shape}")
        if len(arrays["y_train"]) == 0:
            raise DataError(f"{self.name}: no training samples")
        if len(arrays["y_test"]) == 0:
            raise DataError(f"{self.name}: no test samples")
        if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
            raise DataError(
                f"{self.name}: train samples are {arrays['x_train'].shape[1:]} but test samples "
                f"{arrays['x_test'].shape[1:]}"
            )
        try:
            kind = kind_of(arrays["x_train"].dtype)
            if kind_of(arrays["x_test"].dtype) != kind:
                raise DataError(
                    f"{self.name}: x_train is {arrays['x_train'].dtype} but x_test is {arrays['x_test'].dtype}"
                )
        except TaskError as e:
            raise DataError(f"{self.name}: {e}") from None
        for split in ("train", "test"):
            x = arrays[f"x_{split}"]
            if kind == "features":
                x = x.astype(np.float32, copy=False)
                if not np.isfinite(x).all():
                    bad = int(np.count_nonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
                    raise DataError(f"{self.name}: x_{split} holds NaN or Inf features in {bad} sample(s)")
            elif kind == "tokens":
                if x.size and (x.min() < 0 or x.max() > np.iinfo(np.int32).max):
                    raise DataError(f"{self.name}: x_{split} token ids must be in [0, 2**31), got {x.min()}..{x.max()}")
                x = x.astype(np.int32, copy=False)
            put(f"x_{split}", x)
            put(f"y_{split}", self._labels(arrays[f"y_{split}"], f"y_{split}"))
        classes = self.num_classes
        if classes is None:
            classes = int(max(self.y_train.max(), self.y_test.max())) + 1
        elif not isinstance(classes, (int, np.integer)) or not 2 <= classes <= MAX_CLASSES:
            raise DataError(f"{self.name}: num_classes must be an integer from 2 to {MAX_CLASSES}, got {classes!r}")
        for split in ("train", "test"):
            y = getattr(self, f"y_{split}")
            if y.size and (y.min() < 0 or y.max() >= classes):
                raise DataError(
                    f"{self.name}: y_{split} labels must be class ids in [0, {classes}), got {y.min()}..{y.max()}"
                )
        put("num_classes", int(classes))
        for split in ("train", "test"):
            ids = getattr(self, f"device_{split}")
            if ids is None:
                continue
            ids = _array(ids, f"device_{split}")
            if ids.ndim != 1 or len(ids) != len(getattr(self, f"y_{split}")):
                raise DataError(
                    f"{self.name}: device_{split} must give one device id per {split} sample "
                    f"({len(getattr(self, f'y_{split}'))}), got shape {ids.shape}"
                )
            if not np.issubdtype(ids.dtype, np.integer):
                raise DataError(f"{self.name}: device_{split} ids must be integers, got {ids.dtype}")
            put(f"device_{split}", ids.astype(np.int64, copy=False))
        if self.device_test is not None and self.device_train is None:
            raise DataError(f"{self.name}: device_test ids need device_train ids too")
        try:
            self.task  # noqa: B018 - fails now, naming the problem, rather than in a worker
        except TaskError as e:
            raise DataError(f"{self.name}: {e}") from None

    def _labels(self, y: np.ndarray, what: str) -> np.ndarray:
        if np.issubdtype(y.dtype, np.integer):
            if y.size and int(y.max()) >= MAX_CLASSES:  # before a cast to int32 could wrap them
                raise DataError(
                    f"{self.name}: {what} labels must be class ids in [0, {MAX_CLASSES}), got {y.min()}..{y.max()}"
                )
            return y.astype(np.int32, copy=False)
        if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and np.all(y == np.round(y)):
            if y.size and y.max() >= MAX_CLASSES:
                raise DataError(
                    f"{self.name}: {what} labels must be class ids in [0, {MAX_CLASSES}), got {y.min()}..{y.max()}"
                )
            return y.astype(np.int32)
        raise DataError(
            f"{self.name}: {what} must be integer class ids, got {y.dtype}"
            + (" (labels hold NaN, Inf or fractions)" if np.issubdtype(y.dtype, np.floating) else "")
        )

    @functools.cached_property
    def task(self) -> Task:
        kind = kind_of(self.x_train.dtype)
        vocab = int(max(self.x_train.max(initial=0), self.x_test.max(initial=0))) + 1 if kind == "tokens" else None
        if vocab is not None and self.vocab_size is not None:
            if vocab > self.vocab_size:
                raise TaskError(f"token ids up to {vocab - 1} are outside the vocabulary of {self.vocab_size}")
            vocab = int(self.vocab_size)
        assert self.num_classes is not None  # set in __post_init__
        return Task(tuple(self.x_train.shape[1:]), kind, int(self.num_classes), vocab, tuple(self.unscored))

    @property
    def natural_devices(self) -> int | None:
        """How many devices the data's own device ids name (None: it carries none)."""
        return None if self.device_train is None else len(np.unique(self.device_train))


def scale_images(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], the model's input."""
    return np.multiply(x, np.float32(1.0 / 255.0), dtype=np.float32)  # one pass, no uint8->float copy


def as_inputs(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The data's inputs as a model that takes `dtype` takes them: as they are, uint8 pixels scaled to
    float32 in [0, 1] (an artifact that does not scale them itself), or cast."""
    if x.dtype == dtype:
        return x
    if x.dtype == np.uint8 and dtype == np.float32:
        return scale_images(x)
    return x.astype(dtype)


def one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """int labels -> float32 one-hot rows, for an artifact whose `train` takes them (the guide's)."""
    return np.eye(num_classes, dtype=np.float32)[y]
