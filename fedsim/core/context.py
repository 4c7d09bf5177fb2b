"""RunContext: the typed facts of a run that strategies and pipeline stages bind to, built once after
the run is prepared (the data loaded and split, the artifact made). Not the settings themselves: what
they came to (the task, how many samples each device holds, how many steps it trains, the size of
what it uploads)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from fedsim.core.task import Task


def local_steps(samples: np.ndarray | int, batch_size: int, local_epochs: int) -> np.ndarray:
    """Train steps a device with `samples` samples runs in a round: a batch per `batch_size` (the
    last one may be short) for every epoch."""
    return -(-np.asarray(samples, np.int64) // batch_size) * local_epochs


@dataclass(frozen=True)
class RunContext:
    task: Task
    devices: int  # the fleet
    per_round: int  # devices selected per round
    samples: np.ndarray = field(repr=False)  # (devices,) training samples each device holds
    batch_size: int = 32
    local_epochs: int = 1
    lr: float = 0.05  # the devices' learning rate (the artifact's optimiser)
    byzantine: float = 0.0  # the share of the fleet that attacks (fedsim.pipeline.attack)
    params: int = 0  # the model's parameters: the length of a flat weight vector
    upload_bytes: int = 0  # the size of a device's saved checkpoint
    seed: int = 0
    rounds: int = 1  # the rounds the run plans (DP's --dp-epsilon is spent over them)
    sampling: str = "fixed"  # how devices are selected each round: fixed-size cohorts, or poisson
    local_eval: bool = False  # whether devices keep a test split of their own (and score each new model)
    # (weight name, shape) of every weight, in the order of a flat vector (the artifact's layout)
    layout: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def slices(self, names: Iterable[str]) -> np.ndarray:
        """The positions in a flat weight vector of the weights named (bool mask over the layout)."""
        wanted, out, at = set(names), [], 0
        for name, shape in self.layout:
            size = int(np.prod(shape, dtype=np.int64))
            out.append(np.full(size, name in wanted))
            at += size
        return np.concatenate(out) if out else np.zeros(0, bool)

    def steps(self, samples: np.ndarray | int | None = None) -> np.ndarray:
        """Train steps per device (of `samples`, or of every device of the fleet)."""
        return local_steps(self.samples if samples is None else samples, self.batch_size, self.local_epochs)
