"""TF v1 checkpoint bytes <-> named numpy weights: the contract between devices and the coordinator.

A device's `save` signature writes a TF v1 checkpoint (tf.raw_ops.Save); the coordinator writes the
global model in the same format so every device's `restore` signature can read it. Both directions
run in numpy (fedsim.tfv1) for the float32 tensors fedsim's models hold, TensorFlow otherwise. Checkpoints travel
as bytes (through Ray), so nothing assumes a shared filesystem; files live only in a local scratch
folder, on tmpfs (/dev/shm) where there is one.
"""

from __future__ import annotations

import functools
import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.tfv1 import UnsupportedCheckpoint, read_tfv1, write_tfv1

Weights = dict[str, np.ndarray]
# name -> (shape, dtype string): what a valid checkpoint of the run's model holds.
WeightSpec = dict[str, tuple[tuple[int, ...], str]]


class CheckpointError(ValueError):
    """A checkpoint is unreadable, or does not match the model (names, shapes, dtypes, finiteness)."""


def scratch_dir(prefix: str = "fedsim-") -> Path:
    """A private temporary folder, on tmpfs when the machine has one (checkpoint I/O is per device)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _read_with_tensorflow(path: str | os.PathLike[str]) -> Weights:
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(str(path))
        return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    except Exception as e:  # TF raises several types (DataLoss, NotFound, InvalidArgument...)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"not a readable TF v1 checkpoint: {first_line}") from None


def _parse(data: bytes, path: str | os.PathLike[str] | None, scratch: Path | None) -> Weights:
    """The fast numpy reader for what `save` writes; TensorFlow's reader for anything else."""
    if not data:
        raise CheckpointError("empty checkpoint")
    try:
        return read_tfv1(data)
    except (UnsupportedCheckpoint, ValueError):
        pass
    if path is not None:
        return _read_with_tensorflow(path)
    folder = scratch or scratch_dir()
    tmp = folder / f"in-{uuid.uuid4().hex}.ckpt"
    tmp.write_bytes(data)
    try:
        return _read_with_tensorflow(tmp)
    finally:
        tmp.unlink(missing_ok=True)
        if scratch is None:
            folder.rmdir()


def read_checkpoint_file(path: str | os.PathLike[str]) -> Weights:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    return _parse(data, path, None)


def read_checkpoint(data: bytes, scratch: Path | None = None) -> Weights:
    """Checkpoint bytes -> {name: array}. Raises CheckpointError if the bytes are not a checkpoint."""
    return _parse(data, None, scratch)


def write_checkpoint(weights: Mapping[str, np.ndarray], scratch: Path | None = None) -> bytes:
    """{name: array} -> TF v1 checkpoint bytes, readable by the artifact's `restore` signature.

    float32 weights (every model fedsim builds) are written in numpy, byte for byte what
    tf.raw_ops.Save writes, so the coordinator needs no TensorFlow; other dtypes go through TF.
    """
    if all(np.asarray(a).dtype == np.float32 for a in weights.values()):
        return write_tfv1(weights)
    import tensorflow as tf

    folder = scratch or scratch_dir()
    path = folder / f"out-{uuid.uuid4().hex}.ckpt"
    try:
        names = sorted(weights)
        tf.raw_ops.Save(filename=str(path), tensor_names=names, data=[weights[n] for n in names])
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
        if scratch is None:
            folder.rmdir()


def spec_of(weights: Mapping[str, np.ndarray]) -> WeightSpec:
    return {name: (tuple(a.shape), str(a.dtype)) for name, a in weights.items()}


@functools.cache
def _dtype(name: str) -> np.dtype:
    return np.dtype(name)


def check_weights(weights: Mapping[str, np.ndarray], spec: WeightSpec) -> None:
    """Raise CheckpointError naming the first way `weights` differs from the model's spec."""
    if weights.keys() != spec.keys():
        missing = sorted(set(spec) - set(weights))
        if missing:
            raise CheckpointError(f"missing weight(s) {', '.join(missing)}")
        extra = sorted(set(weights) - set(spec))
        raise CheckpointError(f"unexpected weight(s) {', '.join(extra)}")
    for name, (shape, dtype) in spec.items():
        a = weights[name]
        # dtype objects compare without formatting a name (this runs for every device update)
        if a.shape != tuple(shape) or a.dtype != _dtype(dtype):
            raise CheckpointError(f"{name} is {a.dtype}{list(a.shape)}, expected {dtype}{list(shape)}")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{name} holds NaN or Inf")


@dataclass(frozen=True)
class UpdateScreen:
    """What a device update must pass before it is aggregated: the model's names, shapes and dtypes,
    finite values, and optionally a bound on the update's L2 norm ||w - global|| over all tensors
    (reject above max_norm; scale down to clip_norm)."""

    spec: WeightSpec
    max_norm: float | None = None
    clip_norm: float | None = None

    @property
    def needs_global(self) -> bool:
        return self.max_norm is not None or self.clip_norm is not None

    def screen(self, weights: Weights, global_weights: Weights | None) -> tuple[Weights, str]:
        """(weights to aggregate, a note: "" or how they were clipped); CheckpointError to reject."""
        check_weights(weights, self.spec)
        if not self.needs_global:
            return weights, ""
        assert global_weights is not None
        norm = update_norm(weights, global_weights)
        if self.max_norm is not None and norm > self.max_norm:
            raise CheckpointError(f"update norm {norm:.4g} exceeds --max-update-norm {self.max_norm:g}")
        if self.clip_norm is not None and norm > self.clip_norm:
            scale = self.clip_norm / norm
            clipped = {
                k: (global_weights[k] + (w.astype(np.float64) - global_weights[k]) * scale).astype(w.dtype)
                for k, w in weights.items()
            }
            return clipped, f"clipped: update norm {norm:.4g} scaled to --clip-update-norm {self.clip_norm:g}"
        return weights, ""


def update_norm(weights: Mapping[str, np.ndarray], global_weights: Mapping[str, np.ndarray]) -> float:
    """L2 norm of weights - global_weights over every tensor, in float64."""
    total = 0.0
    for name, w in weights.items():
        d = w.astype(np.float64) - global_weights[name]
        total += float(np.dot(d.ravel(), d.ravel()))
    return float(np.sqrt(total))
