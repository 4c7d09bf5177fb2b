"""Converted artifacts by recipe. A conversion takes seconds and the same recipe (a built-in model, its
task, optimiser, seed, checkpoint layout and variant) always gives the same .tflite, so each process
converts a recipe once: the local engine, a notebook's next run, the tests. A builder from a notebook
or a user's module is never cached: it may change under the same name."""

from __future__ import annotations

import dataclasses
from typing import Any

from fedsim.model.builders import MODELS, ArtifactRecipe

_CACHE: dict[tuple[Any, ...], bytes] = {}
MAX_ENTRIES = 16  # the oldest go first; a sweep over models and optimisers stays well inside this


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


def build(recipe: ArtifactRecipe, known: dict[tuple[Any, ...], bytes] | None = None) -> bytes:
    """The recipe's artifact: from this process's cache, from `known` (entries another process sent,
    see `for_task`), or made now (a .tflite converted by TensorFlow, or a .pte exported by torch) and kept."""
    k = key(recipe)
    found = _CACHE.get(k) if k is not None else None
    if found is None and known and k is not None:
        found = known.get(k)
    if found is None and recipe.runtime == "executorch":
        from fedsim.model.pte import export_pte

        found = export_pte(recipe)
    elif found is None:
        from fedsim.model.convert import convert_to_tflite

        found = convert_to_tflite(recipe)
    put(recipe, found)
    return found


def for_task(recipe: ArtifactRecipe) -> dict[tuple[Any, ...], bytes]:
    """This process's artifacts of `recipe` for whichever task (the task is known only once the data is
    loaded, in another process): what to send along to it."""
    probe = key(dataclasses.replace(recipe, task=None))  # type: ignore[arg-type]
    if probe is None:
        return {}
    return {k: v for k, v in _CACHE.items() if k[:1] + k[2:] == probe[:1] + probe[2:]}
