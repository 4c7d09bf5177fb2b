"""Keras model builders, the on-device module (train/infer/save/restore) and its .tflite conversion.

TensorFlow is imported lazily, inside the functions that need it, so importing fedsim stays cheap.
"""

from fedsim.model.builders import (
    MODELS,
    OPTIMIZERS,
    ArtifactRecipe,
    ModelError,
    Optimizer,
    build_cnn,
    build_logreg,
    build_mlp,
    builder_name,
    resolve_builder,
)
from fedsim.model.signatures import INFER, RESTORE, SAVE, SIGNATURES, TRAIN

__all__ = [
    "INFER",
    "MODELS",
    "OPTIMIZERS",
    "RESTORE",
    "SAVE",
    "SIGNATURES",
    "TRAIN",
    "ArtifactRecipe",
    "ModelError",
    "Optimizer",
    "build_cnn",
    "build_logreg",
    "build_mlp",
    "builder_name",
    "convert_to_tflite",
    "resolve_builder",
]


def convert_to_tflite(*args, **kwargs):
    from fedsim.model.convert import convert_to_tflite as impl

    return impl(*args, **kwargs)


convert_to_tflite.__doc__ = "See fedsim.model.convert.convert_to_tflite."
