"""The in-memory data set every part of fedsim shares."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_CLASSES = 10


@dataclass(frozen=True)
class Dataset:
    """Train and test images as uint8 (N, 28, 28) and labels as uint8 (N,).

    Kept in uint8 (a quarter of float32) because every host holds its devices' shards for the
    whole run; scaling to [0, 1] and one-hot encoding happen per device when it trains.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.dtype != np.uint8 or x.ndim != 3:
                raise ValueError(f"{self.name}: {split} images must be uint8 (N, H, W), got {x.dtype} {x.shape}")
            if len(x) != len(y):
                raise ValueError(f"{self.name}: {len(x)} {split} images but {len(y)} labels")


def scale_images(x: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], the model's input."""
    return np.multiply(x, np.float32(1.0 / 255.0), dtype=np.float32)  # one pass, no uint8->float copy


_EYE = np.eye(NUM_CLASSES, dtype=np.float32)
_EYE.flags.writeable = False


def one_hot(y: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """int labels -> float32 one-hot rows, what categorical cross-entropy expects."""
    eye = _EYE if num_classes == NUM_CLASSES else np.eye(num_classes, dtype=np.float32)
    return eye[y]
