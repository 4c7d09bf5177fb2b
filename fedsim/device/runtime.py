"""The runtime seam: which on-device runtime an artifact needs, told by its own bytes, and a runner of it.

A runner is what a device drives (fedsim.device.train): `restore(path, extras)`, `train(x, y,
extras) -> loss`, `infer(x)`, `save(path)`, `layout`, `inputs(x)`, `labels(y)`, `honours` and
`initial_checkpoint(scratch)`. The TFLite runner drives a .tflite's four signatures; the ExecuTorch
runner a .pte training program. Hosts, strategies, stages and the clock never ask which.
"""

from __future__ import annotations

from typing import Any

RUNTIMES = ("tflite", "executorch")
SUFFIX = {"tflite": ".tflite", "executorch": ".pte"}


def is_program(artifact: bytes) -> bool:
    """Whether the bytes are an ExecuTorch program (identifier ET.. at bytes 4-8, as in ET12)."""
    return bytes(artifact[4:6]) == b"ET"


def runtime_of(artifact: bytes) -> str:
    """The runtime an artifact needs, tflite or executorch, from its identifier (bytes 4-8)."""
    ident = bytes(artifact[4:8])
    if ident == b"TFL3":
        return "tflite"
    if is_program(artifact):
        return "executorch"
    raise ValueError(f"neither a .tflite (identifier TFL3) nor an ExecuTorch .pte (ET..): its bytes 4-8 are {ident!r}")


def open_runner(artifact: bytes, num_threads: int = 1) -> Any:
    """A runner of the artifact in the runtime it needs."""
    if runtime_of(artifact) == "executorch":
        from fedsim.device.executorch import ExecuTorchRunner

        return ExecuTorchRunner(artifact, num_threads)
    from fedsim.device.tflite import Runner

    return Runner(artifact, num_threads)
