"""The runtime seam: which on-device runtime an artifact needs, told by its own bytes, and a runner of it.

A runner is what a device drives (fedsim.device.train): `restore(path, extras)`, `train(x, y,
extras) -> loss`, `infer(x)`, `save(path)`, `layout`, `inputs(x)`, `labels(y)`, `honours` and
`initial_checkpoint(scratch)`. The TFLite runner drives a .tflite's four signatures; the ExecuTorch
runner a .pte training program. Hosts, strategies, stages and the clock never ask which.
"""

from __future__ import annotations

from typing import Any

from fedsim.model.formats import RUNTIMES, SUFFIX, is_program, runtime_of

__all__ = ["RUNTIMES", "SUFFIX", "is_program", "open_runner", "runtime_of"]


def open_runner(artifact: bytes, num_threads: int = 1) -> Any:
    """A runner of the artifact in the runtime it needs."""
    if runtime_of(artifact) == "executorch":
        from fedsim.device.executorch import ExecuTorchRunner

        return ExecuTorchRunner(artifact, num_threads)
    from fedsim.device.tflite import Runner

    return Runner(artifact, num_threads)
