"""The task contract: what one sample looks like and how many classes there are, taken from the data.

Every other part of fedsim reads the task instead of assuming a shape: the artifact's `train` /
`infer` input specs, the model builders, the label counts, the partitioners and the evaluation.
Imports nothing else from fedsim (it sits below `data` and `model`).

Three kinds of input, chosen by the data's dtype:
  image     uint8 (H, W) or (H, W, C) pixels; the artifact takes uint8 and scales to [0, 1] itself
  features  float feature arrays (any shape); the artifact takes float32 as they are
  tokens    integer sequences (L,); the artifact takes int32 ids in [0, vocab_size)
Labels are always integer class ids in [0, num_classes).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

KINDS = ("image", "features", "tokens")
INPUT_DTYPES = {"image": "uint8", "features": "float32", "tokens": "int32"}


class TaskError(ValueError):
    """The data does not make a task fedsim can train on (the message names the problem)."""


MAX_VOCAB = 1_000_000  # an embedding table of more rows would take gigabytes on every device


@dataclass(frozen=True)
class Task:
    """One sample's shape and dtype, the number of classes, and (for tokens) the vocabulary size."""

    input_shape: tuple[int, ...]
    kind: str
    num_classes: int
    vocab_size: int | None = None
    # classes whose targets accuracy does not count (a keyboard's out-of-vocabulary and end-of-sentence
    # tokens: not suggestions it makes); the loss and perplexity count every target
    unscored: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "unscored", tuple(sorted(int(c) for c in self.unscored)))
        if any(not 0 <= c < self.num_classes for c in self.unscored):
            raise TaskError(f"unscored classes must be class ids in [0, {self.num_classes}), got {self.unscored}")
        if self.kind not in KINDS:
            raise TaskError(f"task kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.input_shape or any(s < 1 for s in self.input_shape):
            raise TaskError(f"a sample's shape must be non-empty and positive, got {self.input_shape}")
        if self.kind == "image" and len(self.input_shape) not in (2, 3):
            raise TaskError(f"uint8 images must be H x W or H x W x C per sample, got {self.input_shape}")
        if self.kind == "tokens" and (len(self.input_shape) != 1 or not self.vocab_size or self.vocab_size < 1):
            raise TaskError(f"token inputs must be (length,) sequences with a vocabulary, got {self.input_shape}")
        if self.num_classes < 2:
            raise TaskError(f"a classification task needs at least 2 classes, got {self.num_classes}")
        if self.vocab_size is not None and self.vocab_size > MAX_VOCAB:
            raise TaskError(
                f"token ids up to {self.vocab_size - 1} make an embedding of {self.vocab_size} rows per device; "
                f"fedsim takes vocabularies of at most {MAX_VOCAB} (re-index the tokens)"
            )

    @property
    def input_dtype(self) -> str:
        """What the artifact's `x` takes."""
        return INPUT_DTYPES[self.kind]

    def describe(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        what = {
            "image": f"{shape} uint8 images",
            "features": f"{shape} float features",
            "tokens": f"length-{shape} token sequences (vocabulary {self.vocab_size})",
        }[self.kind]
        return f"{what}, {self.num_classes} classes"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["input_dtype"] = self.input_dtype
        d["unscored"] = list(self.unscored)
        if not self.unscored:  # (what every image and feature task, and a run before text, records)
            del d["unscored"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(
            tuple(d["input_shape"]), d["kind"], int(d["num_classes"]), d.get("vocab_size"), tuple(d.get("unscored", ()))
        )

    @property
    def text(self) -> bool:
        """Whether the task is one of tokens (its records add perplexity, and top-3 accuracy)."""
        return self.kind == "tokens"


def kind_of(dtype: np.dtype) -> str:
    """uint8 -> image, float -> features, other integers -> tokens; anything else is refused."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return "image"
    if np.issubdtype(dtype, np.floating):
        return "features"
    if np.issubdtype(dtype, np.integer):
        return "tokens"
    raise TaskError(
        f"inputs of dtype {dtype} cannot be fed to a model; use uint8 images, float features or integer tokens"
    )


def sample_inputs(task: Task, n: int, seed: int = 0) -> np.ndarray:
    """n random inputs of the task's shape and dtype (for checks and latency measurements)."""
    rng = np.random.default_rng(seed)
    shape = (n, *task.input_shape)
    if task.kind == "image":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if task.kind == "tokens":
        return rng.integers(0, task.vocab_size or 1, shape, dtype=np.int32)
    return rng.standard_normal(shape).astype(np.float32)


def sample_batch(task: Task, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random inputs and class ids (0, 1, ... in turn) of the task: a batch to time a model with."""
    return sample_inputs(task, n), np.arange(n, dtype=np.int32) % task.num_classes
