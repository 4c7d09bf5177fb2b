"""The settings of one experiment, in sections, each declared and validated by the part it configures.

    run       the fleet and the rounds (this module)           data      fedsim.data.settings
    device    the model and its on-device training             strategy  the aggregation rule and its Params
    pipeline  each update stage's own section (fedsim.pipeline) clock     fedsim.clock.settings
    engine    where hosts run (fedsim.engine.settings)         tracking  fedsim.report.tracking
    schedule  synchronous rounds or FedBuff (fedsim.loop.schedule)

Every setting has one flat name, unique across sections: the CLI flag (with dashes), the key in a TOML
file (at the top level, or in its section's table) and a keyword of `Config(...)` / `fedsim.run(...)`.
config.json is written by section; a flat config.json of an earlier fedsim loads the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from fedsim.clock.settings import ClockSettings
from fedsim.core.settings import Check, ConfigError, Field, Section, fields_of, flag
from fedsim.data.settings import DataSettings
from fedsim.engine.settings import EngineSettings
from fedsim.experiment import config_keys
from fedsim.loop.schedule import ScheduleSettings
from fedsim.loop.settings import RunSettings
from fedsim.model.settings import DeviceSettings
from fedsim.pipeline import STAGES
from fedsim.report.tracking import TrackingSettings
from fedsim.strategies import STRATEGIES, Strategy, make_strategy, strategy_fields

S = TypeVar("S", bound=Section)

__all__ = ["Config", "ConfigError", "RunSettings", "config_fields"]


# The sections with fixed fields, in the order flags are listed; the strategy and the pipeline's stages
# declare theirs elsewhere (fedsim.strategies, fedsim.pipeline).
SECTIONS: tuple[type[Section], ...] = (
    RunSettings,
    DataSettings,
    DeviceSettings,
    ClockSettings,
    ScheduleSettings,
    EngineSettings,
    TrackingSettings,
)
_BY_NAME = {s.section: s for s in SECTIONS}
_STAGE_SECTIONS = {s.Settings.section: s.Settings for s in STAGES}
_STRATEGY_NAME = Field(
    "strategy",
    "the aggregation strategy: " + ", ".join(STRATEGIES) + ", or your own as package.module:Class",
    Check("str"),  # a name of STRATEGIES or an import path: make_strategy checks it
    "fedavg",
    "strategy",
)


def config_fields() -> dict[str, Field]:
    """Every setting by its flat name, in the order the CLI lists them: the run, the data, the device,
    the strategy and its hyperparameters, each pipeline stage's, the clock, the engine, tracking."""
    out: dict[str, Field] = {}
    for section in SECTIONS[:3]:
        out.update((f.name, f) for f in fields_of(section))
    out["strategy"] = _STRATEGY_NAME
    out.update(strategy_fields())
    for settings in _STAGE_SECTIONS.values():
        out.update((f.name, f) for f in fields_of(settings))
    for section in SECTIONS[3:]:
        out.update((f.name, f) for f in fields_of(section))
    return out


def _home(name: str) -> str | None:
    """The section a flat setting belongs to ("pipeline.attack" for a stage's), None if unknown."""
    for section in SECTIONS:
        if name in section.__dataclass_fields__:  # type: ignore[attr-defined]
            return section.section
    for key, settings in _STAGE_SECTIONS.items():
        if name in settings.__dataclass_fields__:  # type: ignore[attr-defined]
            return f"pipeline.{key}"
    if name == "strategy" or name in strategy_fields():
        return "strategy"
    return None


def _check_model_reads_data(model: str, dataset: str, data: str | None) -> None:
    """A text model given a data set of images or features, or an image model given text: one line now
    (your own arrays are checked when they are loaded)."""
    from fedsim.model.builders import TEXT_MODELS

    if data is not None:
        return
    text = dataset.startswith("shakespeare")
    if model in TEXT_MODELS and not text:
        raise ConfigError(
            f"--model {model} reads token sequences, and --dataset {dataset} holds none; use --dataset "
            "shakespeare or shakespeare_words (or your own token arrays), or --model mlp|cnn|logreg"
        )
    if model == "cnn" and text:
        raise ConfigError(
            f"--model cnn reads images, and --dataset {dataset} holds token sequences; use --model lstm, "
            "lstm-small, or mlp (an embedding averaged over the window)"
        )


def _every_role(values: dict[str, Any]) -> int:
    """A Shakespeare data set's fleet without --devices: one device per role (a natural partition), else
    the usual default."""
    from fedsim.data import DataError
    from fedsim.data.partition import resolve_spec
    from fedsim.data.shakespeare import roles

    partition = values.get("partition")
    if partition is not None and resolve_spec(str(partition)) != "natural":
        return int(RunSettings().devices)
    try:
        return len(roles())
    except DataError as e:
        raise ConfigError(str(e)) from None


class Config:
    """One experiment's settings: `Config(devices=100, lr=0.1)`. Every setting reads by its flat name
    (`config.devices`, `config.strategy` is the strategy's name, `config.data` the .npz); its section by
    type (`config.section(RunSettings)`, `config.stage_settings["attack"]`); `make_strategy()` gives the
    strategy with its hyperparameters. Frozen: `replace` makes a new one."""

    __slots__ = ("_given", "_sections", "_stages", "_strategy", "_strategy_name")

    def __init__(self, **values: Any) -> None:
        grouped: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            home = _home(key)
            if home is None:
                raise ConfigError(f"unknown setting {key!r}" + _hint(key))
            grouped.setdefault(home, {})[key] = value
        if "devices" not in values and str(values.get("dataset", "")).startswith("shakespeare"):
            grouped.setdefault("run", {})["devices"] = _every_role(values)
        put = object.__setattr__
        put(self, "_sections", {s.section: s(**grouped.get(s.section, {})) for s in SECTIONS})
        put(self, "_stages", {k: s(**grouped.get(f"pipeline.{k}", {})) for k, s in _STAGE_SECTIONS.items()})
        chosen = dict(grouped.get("strategy", {}))
        name = chosen.pop("strategy", "fedavg")
        given = {k: v for k, v in chosen.items() if v is not None}
        put(self, "_given", given)
        put(self, "_strategy", make_strategy(name, **given))
        put(self, "_strategy_name", str(name))  # a built-in's name, or your package.module:Class
        self._check()

    def _check(self) -> None:
        """Rules across sections."""
        if self.hosts is not None and self.hosts > self.devices:
            raise ConfigError(
                f"--hosts {self.hosts} exceeds --devices {self.devices}; each host needs at least one device"
            )
        _check_model_reads_data(self.model, self.dataset, self.data)
        run = self.section(RunSettings)
        if run.personal_eval_epochs and not self.device_test_fraction and self.partition != "natural":
            raise ConfigError(
                f"--personal-eval-epochs {run.personal_eval_epochs} scores each device on its own test data: "
                "give --device-test-fraction F (or a --partition natural data set with per-device test data)"
            )
        self.section(ScheduleSettings).check_with(self.section(ClockSettings), self.section(RunSettings).sampling)
        if self.artifact is not None:  # its train signature fixes these: a value given would be ignored
            device = self.section(DeviceSettings)
            fixed = [
                f.name
                for f in dataclasses.fields(device)
                if f.name not in ("artifact", "local_epochs", "batch_size") and getattr(device, f.name) != f.default
            ]
            if fixed:
                raise ConfigError(
                    f"--artifact {self.artifact} trains as it was built: {', '.join(flag(n) for n in fixed)} would "
                    "be ignored (the artifact fixes the model and its on-device optimiser); drop them"
                )

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"Config is frozen; use config.replace({name}=...)")

    def __getattr__(self, name: str) -> Any:
        """A setting by its flat name (`config.lr`)."""
        if name.startswith("_"):
            raise AttributeError(name)
        home = _home(name)
        if home is None:
            raise AttributeError(f"Config has no setting {name!r}" + _hint(name))
        if home == "strategy":
            return self._strategy_name if name == "strategy" else self._given.get(name)
        if home.startswith("pipeline."):
            return getattr(self._stages[home.split(".", 1)[1]], name)
        return getattr(self._sections[home], name)

    def section(self, cls: type[S]) -> S:
        """One section's settings, typed: `config.section(RunSettings).devices`."""
        return self._sections[cls.section]

    @property
    def stage_settings(self) -> dict[str, Section]:
        """Each pipeline stage's settings, by stage section name."""
        return dict(self._stages)

    def make_strategy(self) -> Strategy:
        """The chosen strategy with its hyperparameters (not yet bound to a run)."""
        return make_strategy(self._strategy_name, **self._given)

    @property
    def run_name(self) -> str:
        """--name, or what ran: data set, model and strategy (`fashion_mnist_mlp_fedavg`,
        `synthetic-0.5-0.5_logreg_fedprox`, `mydata_build_cnn_fedadam`, `..._async`)."""
        if self.name:
            return str(self.name)
        data = Path(self.data).stem if self.data else self.dataset
        model = "artifact" if self.artifact else str(self.model).split(":")[-1]
        parts = [data, model, self.strategy.split(":")[-1]] + (["async"] if self.mode == "async" else [])
        name = "_".join(parts)
        return "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.") or "run"

    @property
    def devices_per_round(self) -> int:
        return self.section(RunSettings).devices_per_round

    @property
    def partition_spec(self) -> str:
        return self.section(DataSettings).partition_spec

    # ---- dict / TOML --------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (a strategy's hyperparameters only where given)."""
        out: dict[str, Any] = {}
        for section in self._sections.values():
            out.update(section.to_dict())
        for settings in self._stages.values():
            out.update(settings.to_dict())
        out["strategy"] = self._strategy_name
        out.update(self._given)
        return out

    def to_dict(self) -> dict[str, Any]:
        """config.json's layout: one table per section, the pipeline's stages nested."""
        out: dict[str, Any] = {name: section.to_dict() for name, section in self._sections.items()}
        out["strategy"] = {"name": self._strategy_name, **self._given}
        out["pipeline"] = {k: s.to_dict() for k, s in self._stages.items() if s.to_dict()}
        return out

    def replace(self, **changes: Any) -> Config:
        return Config(**{**self.flat(), **changes})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Config({', '.join(f'{k}={v!r}' for k, v in self.flat().items())})"

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self.flat(),)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """A config from config.json (by section) or a TOML file (flat keys, section tables, or both);
        a flat config.json of an earlier fedsim too."""
        return cls(**flatten_settings(data))

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> Config:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {p}: no such file")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config {p}: not valid TOML ({e})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--config {p}: not valid TOML (not UTF-8 text)") from None
        flat = flatten_settings(data)
        flat.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**flat)


def _rebuild(flat: dict[str, Any]) -> Config:
    return Config(**flat)


def _hint(key: str) -> str:
    close = difflib.get_close_matches(key, list(config_fields()), 1)
    return f" (did you mean {close[0]}?)" if close else ""


def flatten_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """Flat settings from a config file's or config.json's dict: top-level keys, section tables
    ([run], [data], [strategy] with name, [pipeline.attack], ...), or both; every value type-checked
    and named by the key it came under. Unknown keys fail with "did you mean"."""
    return config_keys.flatten(data, config_fields(), _BY_NAME, _STAGE_SECTIONS, strategy_fields(), _hint)
