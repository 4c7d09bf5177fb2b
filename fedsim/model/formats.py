"""Which on-device runtime an artifact is for, told by its own bytes (a .tflite's flatbuffer
identifier TFL3, an ExecuTorch program's ET..): what the runtime seam (fedsim.device.runtime), the
run folder and the checks go by."""

from __future__ import annotations

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
