"""What a .tflite artifact holds and whether it can run a task: the checks a run makes before its
first round, and the report of `fedsim inspect` (also written as artifact.json into every run folder).

Needs TensorFlow (the interpreter); the coordinator never imports this module.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.checkpoint import CheckpointError, read_checkpoint_file, scratch_dir, unpack
from fedsim.model.signatures import CHECKPOINT_PATH, CONTROL_PATH, INFER, PACKED, RESTORE, SAVE, SIGNATURES, TRAIN
from fedsim.task import Task, TaskError, kind_of


class ArtifactError(ValueError):
    """A .tflite cannot serve as the run's artifact (the message names the check that failed)."""


# ---- what the file holds ----------------------------------------------------------------------
def signature_ops(artifact: bytes) -> dict[str, list[str]]:
    """Each signature's ops in order, by name; Select TF ops (the Flex delegate) are named Flex*."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(artifact, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    out = {}
    for sig in model.signatureDefs or []:
        ops = []
        for op in model.subgraphs[sig.subgraphIndex].operators or []:
            code = model.operatorCodes[op.opcodeIndex]
            if code.customCode:
                ops.append(code.customCode.decode())
            else:
                ops.append(names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN"))
        out[sig.signatureKey.decode()] = ops
    return out


def _io(details: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"name": name, "shape": [int(s) for s in d["shape_signature"]], "dtype": np.dtype(d["dtype"]).name}
        for name, d in sorted(details.items())
    ]


def task_of(runner: Any) -> Task:
    """The task an artifact itself implies: its `infer` input and output shapes."""
    infer = runner.interpreter.get_signature_runner(INFER)
    x = infer.get_input_details()["x"]
    out = next(iter(infer.get_output_details().values()))
    kind = kind_of(np.dtype(x["dtype"]))
    shape = tuple(int(s) for s in x["shape_signature"][1:])
    return Task(shape, kind, int(out["shape_signature"][-1]), 1 if kind == "tokens" else None)


# ---- checks before a run ----------------------------------------------------------------------
def load_runner(artifact: bytes) -> Any:
    """A Runner of the artifact, or ArtifactError saying why the interpreter refuses it."""
    from fedsim.device import Runner

    try:
        return Runner(artifact)
    except Exception as e:  # the Runner's contract checks, or the interpreter's own errors
        text = str(e).strip().splitlines()
        line = text[0] if text else type(e).__name__
        if not line.startswith(("missing signature", "the .tflite's")):
            line = f"the interpreter cannot load it: {line}"
        raise ArtifactError(line) from None


def check_signatures(runner: Any, task: Task) -> None:
    """The guide's four signatures, with `x`, `y` and outputs that fit the task."""
    available = runner.interpreter.get_signature_list()
    missing = [s for s in SIGNATURES if s not in available]
    if missing:
        raise ArtifactError(
            f"missing signature(s) {', '.join(missing)}; it has {', '.join(sorted(available)) or 'none'} "
            f"(the guide's contract: {', '.join(SIGNATURES)})"
        )
    for sig, allowed in ((SAVE, ([CHECKPOINT_PATH],)), (RESTORE, ([CHECKPOINT_PATH], [CHECKPOINT_PATH, CONTROL_PATH]))):
        inputs = available[sig]["inputs"]
        if sorted(inputs) not in allowed:  # the scaffold variant's restore also takes a control file
            raise ArtifactError(f"{sig} takes {inputs}; the guide's {sig} takes [{CHECKPOINT_PATH!r}]")
    infer_in = runner.interpreter.get_signature_runner(INFER).get_input_details()
    if set(infer_in) != {"x"}:
        raise ArtifactError(f"infer takes {sorted(infer_in)}; the guide's infer takes ['x']")
    for sig, details in ((TRAIN, runner._train.get_input_details()), (INFER, infer_in)):
        x = details["x"]
        shape = tuple(int(s) for s in x["shape_signature"][1:])
        if shape != task.input_shape:
            raise ArtifactError(
                f"{sig}'s x takes samples of shape {shape}, but the data's are {task.input_shape} ({task.describe()})"
            )
        dtype = np.dtype(x["dtype"])
        fits = {
            "image": dtype in (np.uint8, np.float32),
            "features": dtype == np.float32,
            "tokens": np.issubdtype(dtype, np.integer),
        }[task.kind]
        if not fits:
            raise ArtifactError(f"{sig}'s x takes {dtype.name}, which the data ({task.describe()}) cannot be given as")
    y = runner._train.get_input_details()["y"]
    y_shape = [int(s) for s in y["shape_signature"]]
    if len(y_shape) == 2 and y_shape[1] != task.num_classes:
        raise ArtifactError(
            f"train's y takes one-hot rows of {y_shape[1]} classes, but the data has {task.num_classes}"
        )
    if len(y_shape) not in (1, 2):
        raise ArtifactError(
            f"train's y has shape {y_shape}; it must take class ids (batch,) or one-hot (batch, classes)"
        )
    out = next(iter(runner.interpreter.get_signature_runner(INFER).get_output_details().values()))
    classes = int(out["shape_signature"][-1])
    if classes != task.num_classes:
        raise ArtifactError(f"infer outputs {classes} classes, but the data has {task.num_classes}")


def check_training(runner: Any, x: np.ndarray, y: np.ndarray, scratch: Path) -> None:
    """`save` then `restore` round-trips every weight exactly; one `train` step changes the weights
    and returns a finite loss."""
    first, after, back = scratch / "check-a.ckpt", scratch / "check-b.ckpt", scratch / "check-c.ckpt"
    try:
        runner.save(first)
        initial = read_checkpoint_file(first)
    except CheckpointError as e:
        raise ArtifactError(f"save does not write a readable TF v1 checkpoint ({e})") from None
    except Exception as e:  # the signature itself raised
        raise ArtifactError(
            f"save fails: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}"
        ) from None
    if not initial:
        raise ArtifactError("save writes a checkpoint holding no weights")
    try:
        loss = runner.train(runner.inputs(x), runner.labels(y))
    except Exception as e:
        raise ArtifactError(f"train fails on a batch of the data: {str(e).strip().splitlines()[0]}") from None
    if not np.isfinite(loss):
        raise ArtifactError(f"train returns a non-finite loss ({loss}) on a batch of the data")
    runner.save(after)
    trained = read_checkpoint_file(after)
    if trained.keys() != initial.keys():
        raise ArtifactError("save writes different weights before and after train")
    if all(np.array_equal(trained[k], initial[k]) for k in initial):
        raise ArtifactError("one train step changes no weight (a learning rate of 0, or gradients never applied)")
    runner.restore(first)
    runner.save(back)
    restored = read_checkpoint_file(back)
    for name, value in initial.items():
        if not np.array_equal(restored.get(name), value):
            raise ArtifactError(
                f"restore does not bring back {name}: save after restore wrote other values "
                "(restore must assign each restored tensor to its variable)"
            )


def check_artifact(artifact: bytes, task: Task, x: np.ndarray, y: np.ndarray) -> None:
    """Every check a .tflite made elsewhere passes before a run uses it; ArtifactError otherwise."""
    runner = load_runner(artifact)
    check_signatures(runner, task)
    scratch = scratch_dir("fedsim-check-")
    try:
        check_training(runner, x, y, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---- the report -------------------------------------------------------------------------------
def _median_ms(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm-up: first calls allocate tensors
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@dataclass
class ArtifactReport:
    """`fedsim inspect`: signatures, ops, size, parameters, latency and (optionally) parity."""

    source: str
    file_bytes: int
    task: dict[str, Any]
    signatures: dict[str, dict[str, list[dict[str, Any]]]]
    ops: dict[str, list[str]]
    parameters: int
    checkpoint_bytes: int
    latency_ms: dict[str, float]
    batch_size: int
    repeats: int
    parity: pd.DataFrame | None = field(default=None)
    checkpoint_format: str = "tensors"  # packed: one tensor, cut along `layout`; tensors: one per weight
    layout: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)

    def flex_ops(self, signature: str) -> list[str]:
        return sorted({op for op in self.ops.get(signature, []) if op.startswith("Flex")})

    def table(self) -> pd.DataFrame:
        """One row per signature: inputs, outputs, op count, Select TF ops, latency."""
        rows = []
        for sig in SIGNATURES:
            io = self.signatures.get(sig, {})
            fmt = lambda items: ", ".join(f"{d['name']} {d['dtype']}{d['shape']}" for d in items)  # noqa: E731
            rows.append(
                {
                    "signature": sig,
                    "inputs": fmt(io.get("inputs", [])),
                    "outputs": fmt(io.get("outputs", []))
                    if sig != RESTORE
                    else f"{len(io.get('outputs', []))} weight tensors",
                    "ops": len(self.ops.get(sig, [])),
                    "flex_ops": ", ".join(op.removeprefix("Flex") for op in self.flex_ops(sig)),
                    "latency_ms": self.latency_ms.get(sig, float("nan")),
                }
            )
        return pd.DataFrame(rows)

    def to_dict(self) -> dict[str, Any]:
        d = {
            k: getattr(self, k)
            for k in (
                "source",
                "file_bytes",
                "task",
                "signatures",
                "parameters",
                "checkpoint_bytes",
                "checkpoint_format",
                "latency_ms",
                "batch_size",
                "repeats",
            )
        }
        d["layout"] = [[name, list(shape)] for name, shape in self.layout]
        d["ops"] = {
            sig: {"count": len(ops), "flex": self.flex_ops(sig), "distinct": sorted(set(ops))}
            for sig, ops in self.ops.items()
        }
        if self.parity is not None:
            d["parity"] = self.parity.to_dict("records")
        return d

    def write(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, default=float))

    def __str__(self) -> str:
        flex = sorted({op for sig in SIGNATURES for op in self.flex_ops(sig)})
        lines = [
            f"artifact {self.source}: {self.file_bytes / 1024:.1f} KiB; task: {Task.from_dict(self.task).describe()}",
            f"parameters {self.parameters:,}; checkpoint {self.checkpoint_bytes / 1024:.1f} KiB "
            f"({self.checkpoint_format}); "
            f"latency: median of {self.repeats} calls, one thread, batch {self.batch_size}",
            "",
            self.table().to_markdown(index=False, floatfmt=".3f"),
            "",
            f"Select TF ops (need the Flex delegate, which adds to the app's size): {', '.join(flex) or 'none'}",
        ]
        if self.parity is not None:
            lines += [
                "",
                f"parity: the artifact vs the same model in TensorFlow, {len(self.parity)} train steps "
                "on the same batches from the same weights",
                "",
                self.parity.to_markdown(index=False, floatfmt=".3g"),
            ]
        return "\n".join(lines)


def inspect(
    artifact: bytes | str | os.PathLike[str],
    task: Task | None = None,
    batch: tuple[np.ndarray, np.ndarray] | None = None,
    parity: int = 0,
    recipe: Any = None,
    repeats: int = 20,
    batch_size: int = 32,
) -> ArtifactReport:
    """Report on a .tflite (bytes, a file, or a run folder): signatures, ops, size, parameters and
    latency on this machine (one thread). `batch`: (inputs, class ids) to time `train` / `infer`
    with (random inputs of the task otherwise). `parity` > 0 also trains the same model in TensorFlow
    (`recipe`: the ArtifactRecipe that made the file; a run folder names its own) and reports how far
    the two drift apart per step."""
    source = "<bytes>"
    if not isinstance(artifact, bytes):
        path = Path(artifact)
        if path.is_dir():
            meta = _run_meta(path)
            if task is None and meta.get("task"):
                task = Task.from_dict(meta["task"])
            if parity > 0 and recipe is None:
                recipe = recipe_of(meta, task)
            path = path / "model.tflite"
        if not path.is_file():
            raise ArtifactError(f"{path}: no such .tflite")
        source, artifact = str(path), path.read_bytes()
    runner = load_runner(artifact)
    try:
        task = task or task_of(runner)
    except TaskError as e:
        raise ArtifactError(f"cannot tell the task from the artifact ({e})") from None
    check_signatures(runner, task)
    if batch is None:
        from fedsim.model.convert import sample_inputs

        batch = (sample_inputs(task, batch_size), np.arange(batch_size, dtype=np.int32) % task.num_classes)
    x, y = runner.inputs(batch[0][:batch_size]), runner.labels(batch[1][:batch_size])
    scratch = scratch_dir("fedsim-inspect-")
    try:
        ckpt = scratch / "inspect.ckpt"
        runner.save(ckpt)
        weights = read_checkpoint_file(ckpt)
        latency = {
            RESTORE: _median_ms(lambda: runner.restore(ckpt), repeats),
            TRAIN: _median_ms(lambda: runner.train(x, y), repeats),
            INFER: _median_ms(lambda: runner.infer(x), repeats),
            SAVE: _median_ms(lambda: runner.save(scratch / "timing.ckpt"), repeats),
        }
        runner.restore(ckpt)  # timing trained it; parity starts from the file's own weights
        table = run_parity(runner, recipe, task, batch, parity, scratch, batch_size) if parity > 0 else None
        interp = runner.interpreter
        io = {
            sig: {
                "inputs": _io(interp.get_signature_runner(sig).get_input_details()),
                "outputs": _io(interp.get_signature_runner(sig).get_output_details()),
            }
            for sig in SIGNATURES
        }
        return ArtifactReport(
            source,
            len(artifact),
            task.to_dict(),
            io,
            signature_ops(artifact),
            int(sum(w.size for w in weights.values())),
            ckpt.stat().st_size,
            latency,
            len(y),
            repeats,
            table,
            "packed" if PACKED in weights else "tensors",
            runner.layout,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_meta(path: Path) -> dict[str, Any]:
    meta_file = path / "config.json"
    if not meta_file.is_file():
        raise ArtifactError(f"{path}: not a fedsim run folder (no config.json)")
    return json.loads(meta_file.read_text())


def recipe_of(meta: dict[str, Any], task: Task | None) -> Any:
    """The ArtifactRecipe a run folder's config names (for parity), or ArtifactError if it ran a
    .tflite made elsewhere."""
    from fedsim.model.builders import ArtifactRecipe, Optimizer, resolve_builder

    config = meta["config"]
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
        task,
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

    from fedsim.model.convert import build_module, sample_inputs

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
    `model_builder`: the builder, for a run that used a notebook builder or a .tflite made elsewhere."""
    from fedsim.model.builders import ArtifactRecipe, resolve_builder
    from fedsim.model.convert import build_model

    folder = Path(path)
    meta = _run_meta(folder)
    config = meta["config"]
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
