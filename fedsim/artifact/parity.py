"""The trained model back in Keras (`load_model`), and how far the artifact's training drifts from the
same model trained in TensorFlow (`fedsim inspect --parity`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.artifact.checks import ArtifactError
from fedsim.checkpoint import CheckpointError, read_checkpoint_file, unpack
from fedsim.core.settings import flat_view
from fedsim.core.task import Task, sample_inputs


def _run_meta(path: Path) -> dict[str, Any]:
    meta_file = path / "config.json"
    if not meta_file.is_file():
        raise ArtifactError(f"{path}: not a fedsim run folder (no config.json)")
    return json.loads(meta_file.read_text())


def recipe_of(meta: dict[str, Any], task: Task | None) -> Any:
    """The ArtifactRecipe a run folder's config names (for parity), or ArtifactError if it ran a
    .tflite made elsewhere."""
    from fedsim.model.builders import ArtifactRecipe, Optimizer, resolve_builder

    config = flat_view(meta["config"])
    if config.get("artifact"):
        raise ArtifactError("--parity needs the model in TensorFlow; this run used a .tflite made elsewhere")
    optimizer = Optimizer(
        config.get("device_optimizer", "sgd"),
        config["lr"],
        config.get("device_momentum", 0.9),
        config.get("device_beta1", 0.9),
        config.get("device_beta2", 0.999),
        config.get("device_epsilon", 1e-7),
    )
    # runs from before checkpoint formats existed saved one tensor per weight
    return ArtifactRecipe(
        resolve_builder(config.get("model", "mlp")),
        task if task is not None else ArtifactRecipe().task,  # no task recorded: the seed task
        optimizer,
        config["seed"],
        config.get("checkpoint_format", "tensors"),
    )


def run_parity(
    runner: Any,
    recipe: Any,
    task: Task,
    batch: tuple[np.ndarray, np.ndarray],
    steps: int,
    scratch: Path,
    batch_size: int,
) -> pd.DataFrame:
    """Train the artifact and the recipe's tf.Module `steps` steps on the same batches from the same
    weights; per step: both losses and the largest weight difference."""
    import tensorflow as tf

    from fedsim.model.convert import build_module

    if recipe is None:
        raise ArtifactError("--parity needs the recipe that made the artifact (a run folder, or recipe=)")
    from dataclasses import replace

    module = build_module(replace(recipe, task=task))
    start = scratch / "parity.ckpt"
    runner.save(start)
    weights = unpack(read_checkpoint_file(start), runner.layout)
    for name, var in zip(module.weight_names, module.weight_vars):
        var.assign(weights[name])
    rng = np.random.default_rng(0)
    rows = []
    for step in range(1, steps + 1):
        if len(batch[1]) >= batch_size * steps:
            xb, yb = (
                batch[0][(step - 1) * batch_size : step * batch_size],
                batch[1][(step - 1) * batch_size : step * batch_size],
            )
        else:
            xb = sample_inputs(task, batch_size, seed=step)
            yb = rng.integers(0, task.num_classes, batch_size).astype(np.int32)
        lite_loss = runner.train(runner.inputs(xb), runner.labels(yb))
        tf_loss = float(module.train(tf.constant(xb), tf.constant(yb, tf.int32))["loss"])
        runner.save(scratch / "parity-step.ckpt")
        lite = unpack(read_checkpoint_file(scratch / "parity-step.ckpt"), runner.layout)
        diffs = [np.max(np.abs(lite[n] - v.numpy())) for n, v in zip(module.weight_names, module.weight_vars)]
        scale = max(float(np.max(np.abs(v.numpy()))) for v in module.weight_vars)
        rows.append(
            {
                "step": step,
                "loss_tflite": lite_loss,
                "loss_tf": tf_loss,
                "loss_diff": abs(lite_loss - tf_loss),
                "max_weight_diff": float(max(diffs)),
                "max_weight_diff_rel": float(max(diffs)) / scale,
            }
        )
    return pd.DataFrame(rows)


def load_model(
    path: str | os.PathLike[str], checkpoint: str | os.PathLike[str] | None = None, model_builder: Any = None
) -> Any:
    """The trained Keras model of a run folder: the builder and task its config.json names, with the
    weights of its global.ckpt (or of `checkpoint`), whichever checkpoint format the artifact wrote.
    `model_builder`: the builder, for a run that used a notebook builder or a .tflite made elsewhere.

    Inputs: the Keras model takes what the model's first layer takes, images as float32 scaled to
    [0, 1] (`fedsim.data.scale_images`); the .tflite takes the raw uint8 pixels and scales them inside
    its signatures. Fed uint8 the Keras model sees pixels 255 times too bright (on the seed MLP:
    0.752 test accuracy instead of 0.773)."""
    from fedsim.model.builders import ArtifactRecipe, resolve_builder
    from fedsim.model.convert import build_model

    folder = Path(path)
    meta = _run_meta(folder)
    config = flat_view(meta["config"])
    if model_builder is None and config.get("artifact"):
        raise ArtifactError(f"{folder}: this run used a .tflite made elsewhere; pass model_builder= to rebuild it")
    task = Task.from_dict(meta["task"]) if meta.get("task") else Task((28, 28), "image", 10)
    builder = model_builder or resolve_builder(config.get("model", "mlp"))
    model = build_model(ArtifactRecipe(builder, task, seed=config["seed"]))
    layout = sorted((w.path, tuple(int(d) for d in w.shape)) for w in model.weights)
    try:
        named = unpack(read_checkpoint_file(checkpoint or folder / "global.ckpt"), layout)
    except CheckpointError as e:
        raise ArtifactError(f"{folder}: {e}") from None
    missing = sorted({name for name, _ in layout} - set(named))
    if missing:
        raise ArtifactError(f"{folder}: the checkpoint lacks {', '.join(missing[:3])}; is this the run's model?")
    for w in model.weights:
        w.assign(np.asarray(named[w.path]).reshape(w.shape))
    return model
