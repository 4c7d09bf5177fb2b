"""TFLite and ExecuTorch side by side: a built-in model's .tflite and its PyTorch twin's training
program, given the same weights (fedsim.model.torch_models.from_keras), compute the same outputs and
take the same training steps. Needs both runtimes (the TensorFlow-free environment runs
test_executorch.py only)."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.checkpoint import read_checkpoint_file, unpack, write_checkpoint
from fedsim.core.task import Task, sample_inputs
from fedsim.device import open_runner
from fedsim.model import cache
from fedsim.model.builders import ArtifactRecipe, build_cnn, build_logreg, build_mlp
from fedsim.model.torch_models import from_keras

TASK = Task((28, 28), "image", 10)


@pytest.mark.parametrize("builder", [build_mlp, build_logreg, build_cnn], ids=["mlp", "logreg", "cnn"])
def test_the_same_weights_give_the_same_outputs_and_steps_on_both_runtimes(builder, tmp_path):
    tflite = open_runner(cache.build(ArtifactRecipe(builder, TASK, seed=2)))
    program = open_runner(cache.build(ArtifactRecipe(builder, TASK, seed=2, runtime="executorch")))
    start = tmp_path / "keras.ckpt"
    tflite.save(start)
    keras_weights = unpack(read_checkpoint_file(start), tflite.layout)
    (tmp_path / "torch.ckpt").write_bytes(write_checkpoint(from_keras(keras_weights, TASK)))
    program.restore(tmp_path / "torch.ckpt")

    x = sample_inputs(TASK, 64, seed=1)
    logits = program.infer(program.inputs(x))
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, tflite.infer(tflite.inputs(x)), atol=1e-5)

    y = np.arange(64, dtype=np.int32) % 10
    for i in range(0, 64, 16):  # four SGD steps, the same batches
        a = tflite.train(tflite.inputs(x[i : i + 16]), tflite.labels(y[i : i + 16]))
        b = program.train(program.inputs(x[i : i + 16]), program.labels(y[i : i + 16]))
        assert a == pytest.approx(b, abs=1e-5)
    tflite.save(tmp_path / "after.ckpt")
    trained = from_keras(unpack(read_checkpoint_file(tmp_path / "after.ckpt"), tflite.layout), TASK)
    for name, value in program.weights().items():
        np.testing.assert_allclose(value, trained[name], atol=1e-5)
