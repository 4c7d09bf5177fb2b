"""Aggregation strategies. numpy only: a strategy never sees TensorFlow, Ray or the transport.

A strategy's hyperparameters are declared once, in its `Params` (fedsim.core.settings): every name there is
a run flag, a TOML key (top level or in `[strategy]`) and a sweepable setting."""

from __future__ import annotations

import difflib
from typing import Any

from fedsim.core.settings import ConfigError, Field, flag, import_object
from fedsim.strategies.base import Aggregate, DevicePlan, State, Strategy, reduce_partials
from fedsim.strategies.bulyan import Bulyan
from fedsim.strategies.ditto import Ditto
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategies.fedmedian import FedMedian
from fedsim.strategies.fedper import FedPer
from fedsim.strategies.fedprox import FedProx
from fedsim.strategies.fedrep import FedRep
from fedsim.strategies.krum import Krum, MultiKrum
from fedsim.strategies.local import Local
from fedsim.strategies.qfedavg import QFedAvg
from fedsim.strategies.scaffold import Scaffold
from fedsim.strategies.serveropt import FedAdagrad, FedAdam, FedAvgM, FedYogi, ServerOpt
from fedsim.strategies.trimmedmean import TrimmedMean

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s
    for s in (
        FedAvg,
        FedAvgM,
        FedAdam,
        FedYogi,
        FedAdagrad,
        QFedAvg,
        FedProx,
        Scaffold,
        FedMedian,
        TrimmedMean,
        Krum,
        MultiKrum,
        Bulyan,
        FedPer,
        FedRep,
        Ditto,
        Local,
    )
}

__all__ = [
    "STRATEGIES",
    "Aggregate",
    "Bulyan",
    "DevicePlan",
    "Ditto",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedPer",
    "FedProx",
    "FedRep",
    "FedYogi",
    "Krum",
    "Local",
    "MultiKrum",
    "QFedAvg",
    "Scaffold",
    "ServerOpt",
    "State",
    "Strategy",
    "TrimmedMean",
    "make_strategy",
    "reduce_partials",
    "strategy_fields",
    "strategy_params",
]


def strategy_fields() -> dict[str, Field]:
    """Every hyperparameter any built-in strategy declares, once per name: its help says which
    strategies take it and their defaults ("... (fedavgm 1.0; fedadam, fedyogi 0.01)")."""
    takers: dict[str, list[tuple[str, Any]]] = {}
    first: dict[str, Field] = {}
    for name, cls in STRATEGIES.items():
        for f in cls.fields():
            first.setdefault(f.name, f)
            takers.setdefault(f.name, []).append((name, f.default))
    out = {}
    for key, f in first.items():
        by_default: dict[str, list[str]] = {}
        for name, default in takers[key]:
            shown = (
                "default: the run's"
                if default is None
                else f"{default:g}"
                if isinstance(default, float)
                else str(default)
            )
            by_default.setdefault(shown, []).append(name)
        said = "; ".join(f"{', '.join(names)} {d}" for d, names in by_default.items())
        out[key] = Field(key, f"{f.help} ({said})", f.check, None, "strategy", f.switch, f.cli)
    return out


def strategy_params() -> tuple[str, ...]:
    """The names of every built-in strategy's hyperparameters."""
    return tuple(strategy_fields())


def make_strategy(name: str, **params: Any) -> Strategy:
    """A strategy by name, or your own by package.module:Class (imported; it must subclass
    fedsim.Strategy), with the given hyperparameters (None values: the strategy's default)."""
    cls = STRATEGIES.get(name)
    if cls is None and ":" in name:
        found = import_object(name, "--strategy")
        if not (isinstance(found, type) and issubclass(found, Strategy)):
            raise ConfigError(f"--strategy {name}: not a subclass of fedsim.Strategy")
        cls = found
    if cls is None:
        close = difflib.get_close_matches(name, list(STRATEGIES), 1)
        raise ConfigError(
            f"--strategy must be one of {', '.join(sorted(STRATEGIES))} or package.module:Class, got {name!r}"
            + (f" (did you mean {close[0]}?)" if close else "")
        )
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - set(cls.param_names()))
    if unknown:
        takes = ", ".join(flag(n) for n in cls.param_names()) or "none"
        raise ConfigError(
            f"{', '.join(flag(n) for n in unknown)} is not a setting of --strategy {name} (its settings: {takes})"
        )
    return cls(cls.Params(**given))
