"""Keras model builders. A builder takes no arguments and returns an uncompiled Keras model whose
input is (None, 28, 28) float32 and whose output is (None, 10) class probabilities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ModelBuilder = Callable[[], Any]


def build_mlp() -> Any:
    """The guide's model: Flatten(28x28) -> Dense(128, relu) -> Dense(10, softmax)."""
    import keras

    return keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


MODELS: dict[str, ModelBuilder] = {"mlp": build_mlp}
