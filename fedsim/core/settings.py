"""Declared settings: how each part of fedsim states what it can be told.

A part (the data, the model, a strategy, a pipeline stage, the clock, ...) declares its settings once,
as a frozen dataclass whose fields are made with `setting(default, help, range...)`. That one
declaration gives the field's type, default, valid range and help text, and from it come the run's
validation (one line naming the flag), the CLI flags and their help, the TOML keys, the sweepable
settings and config.json. This module is the mechanism only; it imports nothing else of fedsim.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message names the flag."""


def flag(name: str) -> str:
    """The CLI flag of a setting: its name with dashes."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Check:
    """What one setting accepts: its type, whether None (unset) is allowed, its range or choices."""

    kind: str  # "int", "float", "str" or "bool"
    optional: bool = False
    least: float | None = None  # value >= least
    above: float | None = None  # value > above
    most: float | None = None  # value <= most
    below: float | None = None  # value < below
    choices: tuple[str, ...] | None = None
    why: str = ""  # said after the range in an error ("(it picks ...)")

    def range_text(self) -> str:
        """ "must be in (0, 1]", "must be at least 1", "must be a positive number", ..."""
        low = (
            f"({_num(self.above)}"
            if self.above is not None
            else f"[{_num(self.least)}"
            if self.least is not None
            else None
        )
        high = (
            f"{_num(self.below)})"
            if self.below is not None
            else f"{_num(self.most)}]"
            if self.most is not None
            else None
        )
        if self.choices is not None:
            return f"must be one of {', '.join(self.choices)}"
        if low and high:
            return f"must be in {low}, {high}"
        if self.above == 0 and high is None:
            return "must be at least 1" if self.kind == "int" else "must be a positive number"
        if self.least is not None:
            return f"must be at least {_num(self.least)}"
        if self.above is not None:
            return f"must be above {_num(self.above)}"
        if high is not None:
            return f"must be {'below ' + _num(self.below) if self.below is not None else 'at most ' + _num(self.most)}"
        return {"int": "must be an integer", "float": "must be a number", "bool": "must be true or false"}.get(
            self.kind, "must be a string"
        )

    def problem(self, value: Any) -> str | None:
        """None if `value` is acceptable, else what is wrong ("must be in (0, 1]")."""
        if value is None:
            return None if self.optional else f"must be set ({self.range_text().removeprefix('must be ')})"
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "str":
            if not isinstance(value, str):
                return "must be a string"
            if self.choices is not None and value not in self.choices:
                close = difflib.get_close_matches(value, self.choices, 1)
                return self.range_text() + (f" (did you mean {close[0]}?)" if close else "")
            return None
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.kind == "int" and not (numeric and float(value).is_integer() and isinstance(value, int)):
            return "must be an integer"
        if not numeric:
            return "must be a number"
        if not math.isfinite(value):
            return self.range_text() + " (a finite number)"
        ok = (
            (self.least is None or value >= self.least)
            and (self.above is None or value > self.above)
            and (self.most is None or value <= self.most)
            and (self.below is None or value < self.below)
        )
        return None if ok else self.range_text() + (f" {self.why}" if self.why else "")


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"  # 4294967295, not 4.29497e+09


def setting(
    default: Any,
    help: str,
    *,
    least: float | None = None,
    above: float | None = None,
    most: float | None = None,
    below: float | None = None,
    choices: tuple[str, ...] | None = None,
    switch: bool = False,
    why: str = "",
    cli: bool = True,
    resumable: bool = False,
) -> Any:
    """A dataclass field that is a setting: its default, a one-line help text (the flag's help, the
    README's source), and what values it accepts. `switch`: a CLI flag that takes no value (on when
    given). `cli=False`: a setting of the config file and the Python API only. `resumable`: it may
    change when a run is continued (--resume): where it runs, how long, a budget; never what it computes."""
    meta = {
        "help": help,
        "least": least,
        "above": above,
        "most": most,
        "below": below,
        "choices": choices,
        "switch": switch,
        "why": why,
        "cli": cli,
        "resumable": resumable,
    }
    return dataclasses.field(default=default, metadata={"setting": meta})


@dataclass(frozen=True)
class Field:
    """One declared setting, as the CLI, TOML and sweeps see it."""

    name: str
    help: str
    check: Check
    default: Any
    owner: str  # the section (or strategy / stage) that declared it
    switch: bool = False
    cli: bool = True
    resumable: bool = False  # may change on --resume

    @property
    def type(self) -> Callable[[str], Any]:
        """The converter of a CLI string to this setting's type."""
        if self.switch or self.check.kind == "bool":
            return parse_bool
        return {"int": int, "float": float}.get(self.check.kind, str)


def parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


def _kind(annotation: Any) -> tuple[str, bool]:
    """("int" | "float" | "str" | "bool", optional) of a field's annotation (a string under
    `from __future__ import annotations`)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if not isinstance(annotation, str) and isinstance(annotation, types.UnionType | typing._UnionGenericAlias):  # type: ignore[attr-defined]
        text = " | ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(annotation))
    parts = [p.strip() for p in text.split("|")]
    optional = "None" in parts
    base = next((p for p in parts if p != "None"), "str")
    return (base if base in ("int", "float", "str", "bool") else "str"), optional


def fields_of(cls: type, owner: str | None = None) -> list[Field]:
    """The declared settings of a settings dataclass, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting")
        if meta is None:
            continue
        kind, optional = _kind(f.type)
        check = Check(
            kind, optional, meta["least"], meta["above"], meta["most"], meta["below"], meta["choices"], meta["why"]
        )
        out.append(
            Field(
                f.name,
                meta["help"],
                check,
                f.default,
                owner or str(getattr(cls, "section", "") or cls.__name__),
                meta["switch"],
                meta["cli"],
                meta["resumable"],
            )
        )
    return out


class Section:
    """Base of a settings dataclass (frozen, fields made with `setting`). On creation every field is
    checked against its declaration, then `check` runs the section's own rules across its fields.
    Errors are ConfigError naming the flag: "--fraction must be in (0, 1], got 1.5"."""

    section: ClassVar[str] = ""  # its name in config.json and as a TOML table

    def __post_init__(self) -> None:
        for f in fields_of(type(self)):
            value = getattr(self, f.name)
            wrong = f.check.problem(value)
            if wrong is not None:
                raise ConfigError(f"{flag(f.name)} {wrong}, got {value!r}")
        self.check()

    def check(self) -> None:
        """Rules across this section's fields (the fields' own ranges are already checked)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def need(ok: bool, name: str, what: str, value: Any) -> None:
    """ConfigError naming the flag unless `ok`: "--per-round must be between 1 and --devices (10), got 0"."""
    if not ok:
        raise ConfigError(f"{flag(name)} {what}, got {value!r}")


def type_problem(key: str, check: Check, value: Any) -> str | None:
    """A config file's value of the wrong type, named as the key it was given under (not as a flag),
    with the type it has: "config key lr must be a number, got the string '0.1'"."""
    if value is None and check.optional:
        return None
    kinds = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
    }[check.kind](value)
    if ok:  # of the right type: its range, named as the key too ("config key [strategy] server_lr must be ...")
        wrong = check.problem(value)
        return None if wrong is None else f"config key {key} {wrong}, got {value!r}"
    got = {
        str: "the string",
        bool: "the boolean",
        int: "the integer",
        float: "the number",
        list: "the list",
        dict: "the table",
    }.get(type(value), type(value).__name__)
    return f"config key {key} must be {kinds[check.kind]}, got {got} {value!r}"


def flat_view(config: Mapping[str, Any]) -> dict[str, Any]:
    """Settings by their flat names from a config.json's (or a TOML file's) tables: every table is
    opened (no setting's value is a table), and [strategy]'s name is the setting `strategy`. A flat
    dict comes back as it is. No validation: what any version wrote reads."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            if key == "strategy":
                out["strategy"] = value.get("name")
                out.update({k: v for k, v in value.items() if k != "name"})
            else:
                out.update(flat_view(value))
        else:
            out[key] = value
    return out


def import_object(spec: str, what: str, error: type[Exception] = ConfigError) -> Any:
    """The object `package.module:attr` names, for --model and --strategy. The current folder is on
    the path, as for `python -m` (and put on PYTHONPATH, so that Ray's workers, started later, find
    the module too); a failure is one line of `error` saying where it looked."""
    import importlib
    import os
    import sys

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{what} {spec!r}: expected package.module:name")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
        paths = os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONPATH"] = here + (os.pathsep + paths if paths else "")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise error(
            f"{what} {spec}: cannot import {module_name} ({e}); fedsim looks in the current folder ({here}) "
            "and on PYTHONPATH"
        ) from None
    except Exception as e:  # the module itself failed to import
        raise error(f"{what} {spec}: importing {module_name} raised {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise error(f"{what} {spec}: {module_name} has no {attr}")
        target = getattr(target, part)
    return target
