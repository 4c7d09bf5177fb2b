"""--init-from: the global model a run starts from, instead of the artifact's initial weights (the
on-device training guide's scenario: a model trained centrally, then personalised on the phones).

Three sources: another run's folder (its global.ckpt), a TF v1 checkpoint file (the artifact's own
`save` writes one), or a Keras weights file (.weights.h5) of the model the run builds (--model: the
weights are loaded into that model and named as the artifact names them). Whatever the source, its
weights must be exactly the model's (names and shapes) and finite; the result is written in the
layout of the artifact's own checkpoint (packed, or one tensor per weight)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedsim.checkpoint import CheckpointError, Layout, read_checkpoint, unpack, write_checkpoint
from fedsim.core.settings import ConfigError
from fedsim.model.builders import ArtifactRecipe, call_builder
from fedsim.model.signatures import PACKED

KERAS = (".h5", ".keras")


def source(path: str) -> Path:
    """The file `path` names (a run folder: its global.ckpt); ConfigError when there is none."""
    p = Path(path)
    if p.is_dir():
        p = p / "global.ckpt"
        if not p.is_file():
            raise ConfigError(f"--init-from {path}: a folder, but not a run folder (no global.ckpt in it)")
    elif not p.is_file():
        raise ConfigError(f"--init-from {path}: no such file or folder")
    return p


def initial_checkpoint(path: str, template: bytes, layout: Layout, recipe: ArtifactRecipe | bytes) -> bytes:
    """The checkpoint `path` gives, in the layout of `template` (the artifact's initial checkpoint)."""
    p = source(path)
    if p.name.endswith(KERAS):
        named = _keras_weights(p, recipe)
    else:
        try:
            named = unpack(read_checkpoint(p.read_bytes()), layout)
        except CheckpointError as e:
            raise ConfigError(f"--init-from {path}: not a checkpoint of this model ({e})") from None
    want = dict(layout)
    have = {k: tuple(np.shape(v)) for k, v in named.items()}
    if have != want:
        missing = sorted(set(want) - set(have))
        extra = sorted(set(have) - set(want))
        shapes = sorted(k for k in set(want) & set(have) if want[k] != have[k])
        said = "; ".join(
            f"{what}: {', '.join(names)}"
            for what, names in (("missing", missing), ("not in the model", extra), ("other shapes", shapes))
            if names
        )
        raise ConfigError(f"--init-from {path}: its weights are not this model's ({said})")
    bad = [k for k, v in named.items() if not np.all(np.isfinite(v))]
    if bad:
        raise ConfigError(f"--init-from {path}: non-finite values in {', '.join(sorted(bad))}")
    if PACKED in read_checkpoint(template):
        flat = np.concatenate([np.asarray(named[n], np.float32).ravel() for n, _ in layout])
        return write_checkpoint({PACKED: flat})
    return write_checkpoint({n: np.asarray(named[n], np.float32) for n, _ in layout})


def _keras_weights(p: Path, recipe: ArtifactRecipe | bytes) -> dict[str, Any]:
    if not isinstance(recipe, ArtifactRecipe):
        raise ConfigError(
            f"--init-from {p}: a Keras weights file needs the model this run builds (--model); with --artifact, "
            "give a checkpoint the artifact's save wrote"
        )
    model = call_builder(recipe.builder, recipe.task)
    try:
        model.load_weights(str(p))
    except (ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--init-from {p}: the model cannot load these weights ({first})") from None
    return {w.path: np.asarray(w.numpy(), np.float32) for w in model.weights}
