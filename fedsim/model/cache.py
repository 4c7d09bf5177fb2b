"""Converted artifacts by recipe. A conversion takes seconds (and the TensorFlow import it needs, ~3 s
more) and the same recipe (a built-in model, its task, optimiser, seed, checkpoint layout and variant)
always gives an artifact that computes the same, so a recipe is converted once per machine: kept in
this process, and on disk ($FEDSIM_CACHE/artifacts, default ~/.cache/fedsim/artifacts) for every
later process, run and sweep point. The disk key also holds the versions of
TensorFlow (or torch and ExecuTorch) and a digest of fedsim's model code, so an upgrade or an edit
of a builder converts afresh. FEDSIM_ARTIFACT_CACHE=off turns the disk cache off. A builder from a notebook
or a user's module is never cached: it may change under the same name."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from functools import cache as once
from importlib import metadata
from pathlib import Path
from typing import Any

from fedsim.model.builders import MODELS, ArtifactRecipe

_CACHE: dict[tuple[Any, ...], bytes] = {}
MAX_ENTRIES = 16  # the oldest go first; a sweep over models and optimisers stays well inside this
MAX_DISK_ENTRIES = 64  # the least recently used go first


def cache_dir() -> Path | None:
    """Where converted artifacts are kept across processes: $FEDSIM_CACHE/artifacts (default
    ~/.cache/fedsim, beside the clock's latency tables), or None when FEDSIM_ARTIFACT_CACHE=off."""
    if os.environ.get("FEDSIM_ARTIFACT_CACHE") == "off":
        return None
    return Path(os.environ.get("FEDSIM_CACHE") or Path.home() / ".cache" / "fedsim") / "artifacts"


@once
def _code_digest() -> str:
    """What the conversion runs: fedsim's model code and the versions of the libraries under it."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    for package in ("tensorflow", "torch", "executorch"):
        try:
            h.update(f"{package}=={metadata.version(package)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{package} absent".encode())
    return h.hexdigest()


def _disk_name(k: tuple[Any, ...]) -> str:
    return hashlib.sha256(f"{k!r}|{_code_digest()}".encode()).hexdigest()[:32]


def _disk_get(k: tuple[Any, ...]) -> bytes | None:
    folder = cache_dir()
    if folder is None:
        return None
    name = _disk_name(k)
    try:
        data = (folder / f"{name}.bin").read_bytes()
        entry = json.loads((folder / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        return None  # torn or altered: converted afresh, and overwritten
    try:
        os.utime(folder / f"{name}.json")  # recently used: the last to go
    except OSError:
        pass
    return data


def _publish(folder: Path, name: str, payload: bytes) -> None:
    """Write `folder/name` by rename from a file of this writer's own, so that a reader (or another
    process writing the same entry) never sees half a file. OSError if the disk refuses."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _disk_put(k: tuple[Any, ...], artifact: bytes) -> None:
    """Keep the artifact on disk (best effort: a read-only or full disk only costs the next process a
    conversion). Data first, then its entry, each by rename."""
    folder = cache_dir()
    if folder is None:
        return
    name = _disk_name(k)
    entry = {"sha256": hashlib.sha256(artifact).hexdigest(), "recipe": repr(k), "bytes": len(artifact)}
    try:
        _publish(folder, f"{name}.bin", artifact)
        _publish(folder, f"{name}.json", json.dumps(entry).encode())
        entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-MAX_DISK_ENTRIES]:
            old.unlink(missing_ok=True)
            old.with_suffix(".bin").unlink(missing_ok=True)
    except OSError:
        pass


def key(recipe: ArtifactRecipe) -> tuple[Any, ...] | None:
    """What the .tflite depends on, when it is safe to reuse: a built-in model's recipe."""
    name = next((n for n, b in MODELS.items() if b is recipe.builder), None)
    if name is None:
        return None
    return (name, recipe.task, recipe.optimizer, recipe.seed, recipe.checkpoint_format, recipe.variant, recipe.runtime)


def get(recipe: ArtifactRecipe) -> bytes | None:
    k = key(recipe)
    return _CACHE.get(k) if k is not None else None


def put(recipe: ArtifactRecipe, artifact: bytes) -> None:
    k = key(recipe)
    if k is None:
        return
    _CACHE.pop(k, None)
    _CACHE[k] = artifact
    while len(_CACHE) > MAX_ENTRIES:
        _CACHE.pop(next(iter(_CACHE)))


def recall(kind: str, artifact: bytes) -> str | None:
    """A fact of `kind` remembered about these exact bytes (see `remember`), or None."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        return (folder / f"{hashlib.sha256(artifact).hexdigest()}.{kind}").read_text() or None
    except OSError:
        return None


def remember(kind: str, artifact: bytes, value: str) -> None:
    """Keep a fact that is a pure function of the artifact's bytes (its identity: computing it needs
    TensorFlow's protobufs, which a preparation from the disk cache otherwise never imports)."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        _publish(folder, f"{hashlib.sha256(artifact).hexdigest()}.{kind}", value.encode())
    except OSError:
        pass


def lookup(recipe: ArtifactRecipe, known: dict[tuple[Any, ...], bytes] | None = None) -> bytes | None:
    """The recipe's artifact if a cache holds it (this process's, `known`, the disk's), never converting."""
    k = key(recipe)
    if k is None:
        return None
    found = _CACHE.get(k) or (known or {}).get(k) or _disk_get(k)
    if found is not None:
        put(recipe, found)
    return found


def build(recipe: ArtifactRecipe, known: dict[tuple[Any, ...], bytes] | None = None) -> bytes:
    """The recipe's artifact: from this process's cache, from `known` (entries another process sent,
    see `for_task`), from the disk cache, or made now (a .tflite converted by TensorFlow, or a .pte
    exported by torch) and kept in this process and on disk."""
    found = lookup(recipe, known)
    if found is not None:
        return found
    if recipe.runtime == "executorch":
        from fedsim.model.pte import export_pte

        found = export_pte(recipe)
    else:
        from fedsim.model.convert import convert_to_tflite

        found = convert_to_tflite(recipe)
    k = key(recipe)
    if k is not None:
        _disk_put(k, found)
    put(recipe, found)
    return found


def for_task(recipe: ArtifactRecipe) -> dict[tuple[Any, ...], bytes]:
    """This process's artifacts of `recipe` for whichever task (the task is known only once the data is
    loaded, in another process): what to send along to it."""
    probe = key(dataclasses.replace(recipe, task=None))  # type: ignore[arg-type]
    if probe is None:
        return {}
    return {k: v for k, v in _CACHE.items() if k[:1] + k[2:] == probe[:1] + probe[2:]}
