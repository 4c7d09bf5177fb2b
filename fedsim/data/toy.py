"""A small, learnable 28x28 image set for tests and demos, generated in milliseconds."""

from __future__ import annotations

import numpy as np

from fedsim.data.dataset import Dataset

TOY_CLASSES = 10


def make_toy_images(samples_per_class: int = 200, test_per_class: int = 50, seed: int = 0) -> Dataset:
    """Each class is a fixed random 28x28 prototype plus pixel noise, so a linear model can learn it
    within a few rounds and a test can watch accuracy rise."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, size=(TOY_CLASSES, 28, 28))

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(TOY_CLASSES, dtype=np.int32), per_class)
        noise = rng.normal(0, 90, size=(len(y), 28, 28))
        x = np.clip(prototypes[y] + noise, 0, 255).astype(np.uint8)
        order = rng.permutation(len(y))
        return x[order], y[order]

    x_train, y_train = draw(samples_per_class)
    x_test, y_test = draw(test_per_class)
    return Dataset(x_train, y_train, x_test, y_test, name="toy_images", num_classes=TOY_CLASSES)
