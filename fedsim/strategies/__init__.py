"""Aggregation strategies. numpy only: a strategy never sees TensorFlow, Ray or the transport."""

from fedsim.strategies.base import Partial, Strategy, Update
from fedsim.strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[Strategy]] = {"fedavg": FedAvg}

__all__ = ["STRATEGIES", "FedAvg", "Partial", "Strategy", "Update", "make_strategy"]


def make_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}") from None
