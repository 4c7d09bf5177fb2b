"""The report of `fedsim inspect` (also written as artifact.json into every run folder): signatures,
ops, sizes, parameters and latency on this machine."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsim.artifact.checks import (
    ArtifactError,
    check_signatures,
    identity,
    io_details,
    load_runner,
    signature_ops,
    task_of,
    timed_steps,
)
from fedsim.artifact.parity import _run_meta, recipe_of, run_parity
from fedsim.artifact.program import load_program, program_facts, program_parity
from fedsim.checkpoint import scratch_dir
from fedsim.core.layers import head
from fedsim.core.settings import ConfigError
from fedsim.core.task import Task, TaskError, sample_batch
from fedsim.device.runtime import SUFFIX, is_program
from fedsim.model.signatures import PACKED, RESTORE, SIGNATURES


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
    identity: str = ""  # checks.identity: the same for every conversion of one model

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
                "identity",
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

    def weights(self) -> pd.DataFrame:
        """The model's weights as its checkpoint names them: shape, parameters, whether `head` names it."""
        try:
            final = set(head(self.layout, Task.from_dict(self.task).num_classes))
        except ConfigError:
            final = set()
        return pd.DataFrame(
            [
                {
                    "name": n,
                    "shape": "x".join(map(str, d)) or "scalar",
                    "parameters": int(np.prod(d)),
                    "head": n in final,
                }
                for n, d in self.layout
            ]
        )

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
            "",
            "weights (--personal-layers takes a glob over these names; head: the final layer)",
            "",
            self.weights().to_markdown(index=False),
        ]
        if self.parity is not None:
            lines += [
                "",
                f"parity: the artifact vs the same model in "
                f"{'eager PyTorch' if 'loss_eager' in self.parity else 'TensorFlow'}, {len(self.parity)} train steps "
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
            program = path / f"model{SUFFIX['executorch']}"
            path = program if program.is_file() else path / f"model{SUFFIX['tflite']}"
        if not path.is_file():
            raise ArtifactError(f"{path}: no such .tflite or .pte")
        source, artifact = str(path), path.read_bytes()
    if is_program(artifact):
        program = load_program(artifact)
        facts = program_facts(program, artifact, task, batch, repeats, batch_size)
        table = None
        if parity > 0:  # from the file's own weights, which timing restored
            table = program_parity(program, recipe, Task.from_dict(facts["task"]), parity, batch_size)
        return ArtifactReport(**{**facts, "source": source}, parity=table)
    runner = load_runner(artifact)
    try:
        task = task or task_of(runner)
    except TaskError as e:
        raise ArtifactError(f"cannot tell the task from the artifact ({e})") from None
    check_signatures(runner, task)
    scratch = scratch_dir("fedsim-inspect-")
    try:
        batch = batch if batch is not None else sample_batch(task, batch_size)
        weights, ckpt, latency, used = timed_steps(runner, batch, batch_size, scratch, repeats)
        table = run_parity(runner, recipe, task, batch, parity, scratch, batch_size) if parity > 0 else None
        interp = runner.interpreter
        io = {
            sig: {
                "inputs": io_details(interp.get_signature_runner(sig).get_input_details()),
                "outputs": io_details(interp.get_signature_runner(sig).get_output_details()),
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
            used,
            repeats,
            table,
            "packed" if PACKED in weights else "tensors",
            runner.layout,
            identity(artifact),
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
