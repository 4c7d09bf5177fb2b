"""The uplink encodings of --compress, one file each, registered by name (pfl-research's one file per
postprocessor): a codec is its flag values, the options it takes, its bytes on the wire and its
round trip (fedsim.pipeline.encodings.base). The Compress stage looks them up here and names none.
A new encoding is a new file that decorates its class with @register, and its module's name below."""

from __future__ import annotations

import importlib

from fedsim.core.settings import ConfigError
from fedsim.pipeline.encodings.base import REGISTERED, Codec, register

# the registry: one line per codec module of this package
MODULES = ("half", "quantise", "topk", "ternary")

__all__ = ["MODULES", "Codec", "codecs", "names", "parse", "register"]


def codecs() -> list[type[Codec]]:
    """Every registered codec, in MODULES order."""
    if not REGISTERED:
        for module in MODULES:
            importlib.import_module(f"{__name__}.{module}")
    return list(REGISTERED)


def names(taking: str | None = None) -> list[str]:
    """The --compress values (of the codecs that take the option `taking`)."""
    return [n for c in codecs() if taking is None or taking in c.options for n in c.names]


def said(values: list[str]) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else "".join(values)


def parse(text: str) -> Codec | None:
    """The codec of a --compress value (None for "none"); ConfigError naming every value otherwise."""
    if text == "none":
        return None
    for cls in codecs():
        found = cls.parse(text)
        if found is not None:
            return found
    hints = "; ".join(c.hint for c in codecs() if c.hint)
    raise ConfigError(
        f"--compress must be one of {said(['none', *names()])}" + (f" ({hints})" if hints else "") + f", got {text!r}"
    )
