"""Reading settings from a config file's or config.json's dict into flat settings (fedsim.experiment.config's
flatten_settings): section tables, the strategy's table, each pipeline stage's table, keys of earlier
fedsims renamed; every value type-checked, every unknown key named with "did you mean"."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fedsim.core.settings import ConfigError, Field, type_problem


def flatten(
    data: Mapping[str, Any],
    known: Mapping[str, Field],
    sections: Mapping[str, type],
    stage_sections: Mapping[str, type],
    strategy_keys: Mapping[str, Any],
    hint: Callable[[str], str],
) -> dict[str, Any]:
    """Flat settings from a config file's or config.json's dict (fedsim.experiment.config.flatten_settings, which
    passes its tables: every setting by flat name, the sections and the stages' sections by name, the
    strategies' settings, and the "did you mean" hint)."""
    flat: dict[str, Any] = {}
    where: dict[str, str] = {}

    def take(key: str, value: Any, label: str) -> None:
        if key not in known:
            unknown.append(label + hint(key))
            return
        if key in flat:
            raise ConfigError(f"{key} given both as {where[key]} and as {label}")
        if value is None and known[key].owner == "strategy":  # unset: the strategy's default (flat config.json)
            return
        wrong = type_problem(label, known[key].check, value)
        if wrong is not None:
            raise ConfigError(wrong)
        flat[key], where[key] = value, label

    unknown: list[str] = []
    data = _legacy(data)
    if "sweep" in data and "sweep" not in known:
        raise ConfigError(
            "[sweep] is a table of values for `fedsim sweep --config FILE`; `fedsim run` runs one setting of each"
        )
    for key, value in data.items():
        if key == "strategy" and isinstance(value, Mapping):  # [strategy] name = "fedadam", server_lr = ...
            table = dict(value)
            if "name" not in table:
                raise ConfigError('config table [strategy] needs name = "..." (e.g. name = "fedadam")')
            odd = sorted(set(table) - {"name", *strategy_keys})
            if odd:
                raise ConfigError(
                    f"[strategy] {', '.join(odd)}: not a strategy setting; known: name, {', '.join(strategy_keys)}"
                )
            take("strategy", table.pop("name"), "[strategy] name")
            for k, v in table.items():
                take(k, v, f"[strategy] {k}")
        elif key == "pipeline" and isinstance(value, Mapping):
            for stage, table in value.items():
                if stage not in stage_sections or not isinstance(table, Mapping):
                    unknown.append(f"[pipeline.{stage}]")
                    continue
                for k, v in table.items():
                    if k in stage_sections[stage].__dataclass_fields__:  # type: ignore[attr-defined]
                        take(k, v, f"[pipeline.{stage}] {k}")
                    else:
                        unknown.append(f"[pipeline.{stage}] {k}")
        elif key in sections and isinstance(value, Mapping):
            for k, v in value.items():
                if k in sections[key].__dataclass_fields__:  # type: ignore[attr-defined]
                    take(k, v, f"[{key}] {k}")
                else:
                    unknown.append(f"[{key}] {k}" + hint(k))
        else:
            take(key, value, key)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return flat


def _legacy(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Keys of earlier fedsims' config files, renamed to today's."""
    if "synthetic_samples" in data and "toy_samples" not in data:  # "synthetic" named today's toy_images
        data = {("toy_samples" if k == "synthetic_samples" else k): v for k, v in data.items()}
        if data.get("dataset") == "synthetic":
            data["dataset"] = "toy_images"
    return data
