"""Aggregation strategies. numpy only: a strategy never sees TensorFlow, Ray or the transport."""

from __future__ import annotations

from typing import Any

from fedsim.strategies.base import Aggregate, DevicePlan, Partial, State, Strategy, reduce_partials
from fedsim.strategies.bulyan import Bulyan
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategies.fedavgm import FedAvgM
from fedsim.strategies.fedmedian import FedMedian
from fedsim.strategies.fedopt import FedAdagrad, FedAdam, FedYogi
from fedsim.strategies.fedprox import FedProx
from fedsim.strategies.krum import Krum, MultiKrum
from fedsim.strategies.qfedavg import QFedAvg
from fedsim.strategies.scaffold import Scaffold
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
    )
}

# every hyperparameter any strategy takes, each a run setting (Config field) of the same name
STRATEGY_PARAMS: tuple[str, ...] = tuple(dict.fromkeys(n for s in STRATEGIES.values() for n in s.param_names()))

__all__ = [
    "STRATEGIES",
    "STRATEGY_PARAMS",
    "Aggregate",
    "Bulyan",
    "DevicePlan",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedMedian",
    "FedProx",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "Partial",
    "QFedAvg",
    "Scaffold",
    "State",
    "Strategy",
    "TrimmedMean",
    "make_strategy",
    "reduce_partials",
    "strategy_for",
]


def make_strategy(name: str, **params: Any) -> Strategy:
    """A strategy by name with the given hyperparameters (None values: the strategy's default)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(sorted(STRATEGIES))}") from None
    given = {k: v for k, v in params.items() if v is not None}
    unknown = sorted(set(given) - set(cls.param_names()))
    if unknown:
        takes = ", ".join("--" + n.replace("_", "-") for n in cls.param_names()) or "none"
        flags = ", ".join("--" + n.replace("_", "-") for n in unknown)
        raise ValueError(f"{flags} is not a setting of --strategy {name} (its settings: {takes})")
    return cls(cls.Params(**given))


def strategy_for(config: Any) -> Strategy:
    """The run's strategy: --strategy with its hyperparameters from the config, bound to the run."""
    params = {n: getattr(config, n, None) for n in STRATEGY_PARAMS}
    return make_strategy(config.strategy, **params).bind(config)
