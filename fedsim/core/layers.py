"""Naming parts of a model by its weights' names (a flat vector's layout): the globs of
--personal-layers, and `head`, the final layer of any model."""

from __future__ import annotations

import fnmatch
from typing import Any

from fedsim.core.settings import ConfigError


def personal_names(pattern: str, layout: Any, outputs: int) -> list[str]:
    """The weight names `pattern` matches in `layout` ((name, shape) pairs), `head` resolved."""
    names = [name for name, _ in layout]
    found: list[str] = []
    for part in (p.strip() for p in pattern.split(",") if p.strip()):
        if part == "head":
            found += head(layout, outputs)
        else:
            found += [n for n in names if fnmatch.fnmatchcase(n, part)]
    return [n for n in names if n in set(found)]


def head(layout: Any, outputs: int) -> list[str]:
    """The final layer's weights: the layer whose every weight has the model's output width, in the
    last dimension for a Keras name ("mlp/classifier/kernel": the layer is the path up to its last
    "/") and in the first for a PyTorch one ("net.classifier.weight", out x in: up to its last ".");
    ConfigError when no layer or several are."""
    layers: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
    for name, shape in layout:
        layers.setdefault(name.rsplit("/" if "/" in name else ".", 1)[0], []).append((name, tuple(shape)))

    def width(name: str, shape: tuple[int, ...]) -> int | None:
        return (shape[-1] if "/" in name else shape[0]) if shape else None

    final = [w for w in layers.values() if all(width(name, shape) == outputs for name, shape in w)]
    if len(final) != 1:
        said = "no layer" if not final else f"{len(final)} layers"
        raise ConfigError(
            f"--personal-layers head: {said} of this model ends in its {outputs} outputs; name the weights "
            "with a pattern instead (fedsim inspect lists them)"
        )
    return [name for name, _ in final[0]]
