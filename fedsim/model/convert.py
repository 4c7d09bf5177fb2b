"""Keras builder -> the one .tflite file a phone would ship (TFLITE_BUILTINS + SELECT_TF_OPS)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import tensorflow as tf

from fedsim.model.builders import ModelBuilder, build_mlp
from fedsim.model.module import OnDeviceModule
from fedsim.model.signatures import INFER, RESTORE, SAVE, TRAIN
from fedsim.model.tflog import quiet_native_stderr


def build_module(builder: ModelBuilder = build_mlp, lr: float = 0.05, seed: int = 0) -> OnDeviceModule:
    """The seeded tf.Module; the seed fixes the initial weights, so a config reproduces its model."""
    import keras

    # Keras numbers auto-named layers per process ("dense_2" for a second model); a user builder's
    # checkpoint names would then depend on what ran before. Reset the counters, then seed.
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    return OnDeviceModule(builder(), lr)


def convert_to_tflite(builder: ModelBuilder = build_mlp, lr: float = 0.05, seed: int = 0) -> bytes:
    """Build, export as a SavedModel with the four signatures, and convert with resource variables on."""
    import absl.logging

    # The SavedModel round trip warns about custom gradients of ops the artifact never differentiates.
    absl.logging.set_verbosity(absl.logging.ERROR)
    module = build_module(builder, lr, seed)
    signatures = {
        TRAIN: module.train.get_concrete_function(),
        INFER: module.infer.get_concrete_function(),
        SAVE: module.save.get_concrete_function(),
        RESTORE: module.restore.get_concrete_function(),
    }
    with tempfile.TemporaryDirectory(prefix="fedsim-savedmodel-") as tmp, quiet_native_stderr():
        saved = Path(tmp) / "saved_model"
        tf.saved_model.save(module, str(saved), signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=list(signatures))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        converter.experimental_enable_resource_variables = True
        return converter.convert()
