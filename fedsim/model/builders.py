"""Keras model builders. A builder takes no arguments and returns an uncompiled Keras model whose
input is (None, 28, 28) float32 in [0, 1] (the on-device module scales the uint8 pixels it is given)
and whose output is (None, 10) class probabilities."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ModelBuilder = Callable[[], Any]


def build_mlp() -> Any:
    """The guide's model: Flatten(28x28) -> Dense(128, relu) -> Dense(10, softmax)."""
    import keras

    # Explicit names: they become the checkpoint's tensor names ("mlp/hidden/kernel"), so they must
    # not depend on how many models the process built before.
    return keras.Sequential(
        [
            keras.Input(shape=(28, 28)),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="classifier"),
        ],
        name="mlp",
    )


MODELS: dict[str, ModelBuilder] = {"mlp": build_mlp}


@dataclass(frozen=True)
class ArtifactRecipe:
    """Everything that determines the .tflite: builder, learning rate, seed. Small and picklable
    (cloudpickle carries notebook builders), so the conversion can run wherever TensorFlow already is."""

    builder: ModelBuilder = build_mlp
    lr: float = 0.05
    seed: int = 0

    def build(self) -> bytes:
        from fedsim.model.convert import convert_to_tflite

        return convert_to_tflite(self.builder, self.lr, self.seed)
