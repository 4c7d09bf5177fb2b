"""What a .tflite artifact holds and whether it can run a task: the checks a run makes before its first
round. Needs TensorFlow (the interpreter); the coordinator never imports this package."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.checkpoint import CheckpointError, read_checkpoint_file, scratch_dir
from fedsim.core.task import Task, kind_of
from fedsim.model.signatures import ANCHOR_PATH, CHECKPOINT_PATH, CONTROL_PATH, INFER, RESTORE, SAVE, SIGNATURES, TRAIN

IDENTITY_FACT = "identity-v1"  # the name `identity` keeps its results under (a new algorithm: a new name)


class ArtifactError(ValueError):
    """A .tflite cannot serve as the run's artifact (the message names the check that failed)."""


def signature_ops(artifact: bytes) -> dict[str, list[str]]:
    """Each signature's ops in order, by name; Select TF ops (the Flex delegate) are named Flex*."""
    from fedsim.device.tflite_loader import schema as load_schema

    schema = load_schema()
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


def identity(artifact: bytes) -> str:
    """A hash of what the artifact computes, the same for every conversion of one model: the file with
    each Select TF op's NodeDef re-serialised deterministically. The converter writes a NodeDef's
    attributes in protobuf map order, which differs from process to process, so the file's own bytes
    (and their hash) can differ between two conversions of the same model."""
    import hashlib

    import flatbuffers
    from flatbuffers import flexbuffers

    from fedsim.model import cache

    known = cache.recall(IDENTITY_FACT, artifact)
    if known is not None:
        return known
    from tensorflow.core.framework import node_def_pb2
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(artifact, 0)
    for graph in model.subgraphs or []:
        for op in graph.operators or []:
            code = model.operatorCodes[op.opcodeIndex].customCode
            if code and code.startswith(b"Flex") and op.customOptions is not None:
                name, node = flexbuffers.GetRoot(bytes(op.customOptions)).AsVector  # [op name, NodeDef]
                raw = bytes(flexbuffers.String(node._Indirect(), node._byte_width).Bytes)
                canonical = node_def_pb2.NodeDef.FromString(raw).SerializeToString(deterministic=True)
                op.customOptions = list(name.AsString.encode() + b"\0" + canonical)
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    found = hashlib.sha256(bytes(builder.Output())).hexdigest()
    cache.remember(IDENTITY_FACT, artifact, found)
    return found


def io_details(details: dict[str, Any]) -> list[dict[str, Any]]:
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


def takes(task: Task, dtype: np.dtype) -> bool:
    """Whether a model input of `dtype` can be given the task's data: uint8 pixels as they are or
    scaled to float32, float32 features, integer tokens."""
    return {
        "image": dtype in (np.uint8, np.float32),
        "features": dtype == np.float32,
        "tokens": np.issubdtype(dtype, np.integer),
    }[task.kind]


def check_signatures(runner: Any, task: Task) -> None:
    """The guide's four signatures, with `x`, `y` and outputs that fit the task."""
    available = runner.interpreter.get_signature_list()
    missing = [s for s in SIGNATURES if s not in available]
    if missing:
        raise ArtifactError(
            f"missing signature(s) {', '.join(missing)}; it has {', '.join(sorted(available)) or 'none'} "
            f"(the guide's contract: {', '.join(SIGNATURES)})"
        )
    for sig, extra in ((SAVE, set()), (RESTORE, {CONTROL_PATH, ANCHOR_PATH})):
        inputs = available[sig]["inputs"]
        if CHECKPOINT_PATH not in inputs or not set(inputs) <= {CHECKPOINT_PATH, *extra}:  # (fedsim's variants)
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
        if not takes(task, dtype):
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


def check_training(runner: Any, x: np.ndarray, y: np.ndarray) -> None:
    """`save` then `restore` round-trips every weight exactly; one `train` step changes the weights
    and returns a finite loss (whichever runtime runs the artifact)."""
    scratch = scratch_dir("fedsim-check-")
    try:
        _check_training(runner, x, y, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _check_training(runner: Any, x: np.ndarray, y: np.ndarray, scratch: Path) -> None:
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
        if name not in restored or not np.array_equal(restored[name], value):
            raise ArtifactError(
                f"restore does not bring back {name}: save after restore wrote other values "
                "(restore must assign each restored tensor to its variable)"
            )


def check_artifact(artifact: bytes, task: Task, x: np.ndarray, y: np.ndarray) -> None:
    """Every check a .tflite made elsewhere passes before a run uses it; ArtifactError otherwise."""
    runner = load_runner(artifact)
    check_signatures(runner, task)
    check_training(runner, x, y)


def _median_ms(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm-up: first calls allocate tensors
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def timed_steps(
    runner: Any, batch: tuple[np.ndarray, np.ndarray], batch_size: int, scratch: Path, repeats: int
) -> tuple[dict[str, np.ndarray], Path, dict[str, float], int]:
    """What `save` writes (the weights and the file) and the median latency in ms of each step a device
    takes (restore, train, infer, save: one thread) on the first `batch_size` samples of `batch`, and
    how many that was; the saved weights are restored afterwards (timing trained them)."""
    x, y = runner.inputs(batch[0][:batch_size]), runner.labels(batch[1][:batch_size])
    ckpt = scratch / "inspect.ckpt"
    runner.save(ckpt)
    weights = read_checkpoint_file(ckpt)
    latency = {
        RESTORE: _median_ms(lambda: runner.restore(ckpt), repeats),
        TRAIN: _median_ms(lambda: runner.train(x, y), repeats),
        INFER: _median_ms(lambda: runner.infer(x), repeats),
        SAVE: _median_ms(lambda: runner.save(scratch / "timing.ckpt"), repeats),
    }
    runner.restore(ckpt)
    return weights, ckpt, latency, len(y)
