"""An ExecuTorch training program (.pte) as a run's artifact: the checks a run makes before its first
round and the facts `fedsim inspect` reports, in the .tflite's terms (the same four steps a device
takes: restore, train, infer, save), so artifact.json reads the same for both runtimes."""

from __future__ import annotations

import hashlib
import shutil
from typing import Any

import numpy as np

from fedsim.artifact.checks import ArtifactError, check_training, takes, timed_steps
from fedsim.artifact.checks import check_artifact as check_tflite
from fedsim.checkpoint import scratch_dir
from fedsim.core.task import Task, kind_of, sample_batch, sample_inputs
from fedsim.device.runtime import is_program
from fedsim.model.signatures import CHECKPOINT_PATH, INFER, LOSS, OUTPUT, PACKED, RESTORE, SAVE, TRAIN


def load_program(artifact: bytes) -> Any:
    """An ExecuTorch runner of the program, or ArtifactError saying why it cannot be one."""
    from fedsim.model.pte import need_torch

    try:
        need_torch()
        from fedsim.device.executorch import ExecuTorchRunner

        return ExecuTorchRunner(artifact)
    except Exception as e:  # the runner's contract checks, a missing package, or the loader's errors
        text = str(e).strip().splitlines()
        raise ArtifactError(text[0] if text else type(e).__name__) from None


def program_task(runner: Any) -> Task:
    """The task a program implies: its inputs' sample shape and dtype, its logits' classes."""
    kind = kind_of(runner.x_dtype)
    return Task(runner.sample_shape, kind, int(runner.classes), 1 if kind == "tokens" else None)


def check_program(runner: Any, task: Task) -> None:
    """The program's inputs and outputs fit the task (one line naming what does not)."""
    if runner.sample_shape != task.input_shape:
        raise ArtifactError(
            f"its training method takes samples of shape {runner.sample_shape}, but the data's are "
            f"{task.input_shape} ({task.describe()})"
        )
    if not takes(task, runner.x_dtype):
        raise ArtifactError(f"its x takes {runner.x_dtype.name}, which the data ({task.describe()}) cannot be given as")
    if runner.classes != task.num_classes:
        raise ArtifactError(f"its logits hold {runner.classes} classes, but the data has {task.num_classes}")


def check_artifact(artifact: bytes, task: Task, x: np.ndarray, y: np.ndarray) -> None:
    """Every check an artifact made elsewhere passes before a run uses it, in its own runtime."""
    if not is_program(artifact):
        check_tflite(artifact, task, x, y)
        return
    runner = load_program(artifact)
    check_program(runner, task)
    check_training(runner, x, y)


def program_facts(
    runner: Any,
    artifact: bytes,
    task: Task | None,
    batch: tuple[np.ndarray, np.ndarray] | None,
    repeats: int,
    batch_size: int,
) -> dict[str, Any]:
    """ArtifactReport's fields for a .pte (`runner`: the program loaded, its weights as the file's again
    afterwards): its steps as the guide's signatures (what a device calls), methods, parameters,
    checkpoint size and each step's latency on this machine (one thread)."""
    task = task or program_task(runner)
    check_program(runner, task)
    scratch = scratch_dir("fedsim-inspect-")
    try:
        batch = batch if batch is not None else sample_batch(task, batch_size)
        weights, ckpt, latency, used = timed_steps(runner, batch, batch_size, scratch, repeats)
        sample = [-1, *runner.sample_shape]
        x_io = {"name": "x", "shape": sample, "dtype": runner.x_dtype.name}
        path_io = [{"name": CHECKPOINT_PATH, "shape": [], "dtype": "bytes"}]
        signatures = {
            TRAIN: {
                "inputs": [x_io, {"name": "y", "shape": [-1], "dtype": runner.y_dtype.name}],
                "outputs": [{"name": LOSS, "shape": [], "dtype": "float32"}],
            },
            INFER: {"inputs": [x_io], "outputs": [{"name": OUTPUT, "shape": [-1, runner.classes], "dtype": "float32"}]},
            SAVE: {"inputs": path_io, "outputs": []},
            RESTORE: {
                "inputs": path_io,
                "outputs": [{"name": n, "shape": list(s), "dtype": "float32"} for n, s in runner.layout],
            },
        }
        return {
            "source": "<bytes>",
            "file_bytes": len(artifact),
            "task": task.to_dict(),
            "signatures": signatures,
            # the program's methods stand where a .tflite lists its ops: ExecuTorch runs no Flex delegate
            "ops": {TRAIN: sorted(runner.methods)},
            "parameters": int(sum(w.size for w in weights.values())),
            "checkpoint_bytes": ckpt.stat().st_size,
            "latency_ms": latency,
            "batch_size": used,
            "repeats": repeats,
            "checkpoint_format": "packed" if PACKED in weights else "tensors",
            "layout": runner.layout,
            "identity": hashlib.sha256(artifact).hexdigest(),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def program_parity(runner: Any, recipe: Any, task: Task, steps: int, batch_size: int) -> Any:
    """Train the program and the recipe's model in eager PyTorch `steps` SGD steps on the same batches
    from the same weights; per step: both losses and the largest weight difference."""
    import pandas as pd
    import torch

    from fedsim.model.pte import torch_model

    if recipe is None:
        raise ArtifactError("--parity needs the recipe that made the program (a built-in model, or recipe=)")
    model = torch_model(recipe)
    with torch.no_grad():
        for name, value in runner.weights().items():
            model.get_parameter(name.removeprefix("net.")).copy_(torch.from_numpy(value))
    momentum = runner.momentum if runner.optimizer == "momentum" else 0.0
    sgd = torch.optim.SGD(model.parameters(), lr=runner.lr, momentum=momentum)
    rng = np.random.default_rng(0)
    rows = []
    for step in range(1, steps + 1):
        x = runner.inputs(sample_inputs(task, batch_size, seed=step))
        y = rng.integers(0, task.num_classes, batch_size)
        loss = runner.train(x, runner.labels(y))
        xt = torch.from_numpy(x).to(torch.float32) / 255.0 if x.dtype == np.uint8 else torch.from_numpy(x)
        sgd.zero_grad()
        eager = torch.nn.functional.cross_entropy(model(xt), torch.from_numpy(y))
        eager.backward()
        sgd.step()
        weights = runner.weights()
        diff = max(float(np.max(np.abs(weights[f"net.{n}"] - p.detach().numpy()))) for n, p in model.named_parameters())
        rows.append({"step": step, "loss_program": loss, "loss_eager": eager.item(), "max_weight_diff": diff})
    return pd.DataFrame(rows)
