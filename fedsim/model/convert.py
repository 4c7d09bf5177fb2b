"""Keras builder -> the one .tflite file a phone would ship (TFLITE_BUILTINS + SELECT_TF_OPS)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from fedsim.core.task import Task, sample_inputs
from fedsim.model.builders import ArtifactRecipe, ModelError, call_builder
from fedsim.model.module import OnDeviceModule, outputs_probabilities
from fedsim.model.signatures import INFER, RESTORE, SAVE, TRAIN
from fedsim.model.tflog import quiet_native_stderr


def build_model(recipe: ArtifactRecipe) -> Any:
    """The seeded Keras model of a recipe, checked against its task."""
    import keras

    # Keras numbers auto-named layers per process ("dense_2" for a second model); a user builder's
    # checkpoint names would then depend on what ran before. Reset the counters, then seed.
    keras.backend.clear_session()
    keras.utils.set_random_seed(recipe.seed)
    model = call_builder(recipe.builder, recipe.task)
    if not isinstance(model, keras.Model):
        raise ModelError(f"the model builder returned {type(model).__name__}, not a Keras model")
    check_model(model, recipe.task)
    return model


def build_module(recipe: ArtifactRecipe) -> OnDeviceModule:
    """The seeded tf.Module; the seed fixes the initial weights, so a config reproduces its model."""
    return OnDeviceModule(
        build_model(recipe), recipe.task, recipe.optimizer.build(), recipe.checkpoint_format, recipe.variant
    )


def _model_input(task: Task, x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / 255.0 if task.kind == "image" else x


def check_model(model: Any, task: Task) -> None:
    """One line naming what keeps the model from training on this task on a device: input or output
    shapes that do not match the data, or a layer whose weights get no gradient."""
    try:
        in_shape = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    except (AttributeError, ValueError):
        in_shape = None
    if in_shape is not None and in_shape != task.input_shape:
        raise ModelError(
            f"the model takes inputs of shape {in_shape} but the data's samples are {task.input_shape} "
            f"({task.describe()})"
        )
    x = _model_input(task, sample_inputs(task, 2))
    y = np.arange(2, dtype=np.int32) % task.num_classes
    try:
        with tf.GradientTape() as tape:
            out = model(x, training=True)
            logits = not outputs_probabilities(model)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, out, from_logits=logits))
    except Exception as e:  # the model cannot even run on one sample of the data
        raise ModelError(f"the model fails on the data's inputs {task.input_shape}: {_first_line(e)}") from None
    if tuple(out.shape[1:]) != (task.num_classes,):
        raise ModelError(
            f"the model outputs {tuple(out.shape[1:])} per sample; the data has {task.num_classes} "
            f"classes, so its last layer must output ({task.num_classes},)"
        )
    gradients = tape.gradient(loss, model.trainable_variables)
    for variable, gradient in zip(model.trainable_variables, gradients):
        if gradient is None:
            layer = _layer_of(model, variable.path)
            raise ModelError(
                f"layer {layer!r} cannot be trained on device: its weight {variable.path} gets no "
                "gradient from the loss (a layer after it is not differentiable)"
            )


def _layer_of(model: Any, path: str) -> str:
    for layer in getattr(model, "layers", []):
        if any(w.path == path for w in layer.weights):
            return layer.name
    return path.rsplit("/", 1)[0]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _conversion_error(model: Any, e: BaseException) -> ModelError:
    """The converter's error as one line, naming the layer whose op it could not convert."""
    text = str(e)
    ops = sorted(set(re.findall(r"tf\.(\w+)", text)) | set(re.findall(r"'(\w+)' op", text)))
    for layer in getattr(model, "layers", []):
        if re.search(rf"\b{re.escape(layer.name)}\b", text):
            what = f" (op {', '.join(ops[:3])})" if ops else ""
            return ModelError(
                f"layer {layer.name!r} cannot be converted for on-device training{what}: {_first_line(e)[:300]}"
            )
    return ModelError(f"the model cannot be converted for on-device training: {_first_line(e)[:300]}")


def convert_to_tflite(recipe: ArtifactRecipe | None = None) -> bytes:
    """Build, export as a SavedModel with the four signatures, and convert with resource variables on."""
    import absl.logging

    # The SavedModel round trip warns about custom gradients of ops the artifact never differentiates.
    absl.logging.set_verbosity(absl.logging.ERROR)
    module = build_module(recipe or ArtifactRecipe())
    signatures = {
        TRAIN: module.train.get_concrete_function(),
        INFER: module.infer.get_concrete_function(),
        SAVE: module.save.get_concrete_function(),
        RESTORE: module.restore.get_concrete_function(),
    }
    with tempfile.TemporaryDirectory(prefix="fedsim-savedmodel-") as tmp, quiet_native_stderr():
        saved = Path(tmp) / "saved_model"
        try:
            tf.saved_model.save(module, str(saved), signatures=signatures)
            converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=list(signatures))
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
            converter.experimental_enable_resource_variables = True
            return converter.convert()
        except Exception as e:  # converter errors are long; the user gets the layer and the first line
            raise _conversion_error(module.model, e) from None
