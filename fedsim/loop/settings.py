"""The settings of the fleet and its rounds: how many devices, how many rounds, who is selected, when
the model is evaluated, where the run is written."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fedsim.core.settings import ConfigError, Section, need, setting


@dataclass(frozen=True)
class RunSettings(Section):
    section = "run"
    # 100 phones each holding 600 Fashion-MNIST images: a fleet, yet a round costs well under 1 s on 2 cores
    devices: int = setting(100, "simulated phones in the fleet", least=1)
    # 40 rounds take FedAvg on these shards past 0.82 test accuracy in well under a minute on 2 cores
    rounds: int = setting(40, "federated rounds", least=1, resumable=True)
    # seeded; 1.0 = every device every round
    fraction: float = setting(1.0, "share of devices selected per round", above=0, most=1)
    per_round: int | None = setting(None, "devices selected per round, as a count (instead of --fraction)")
    # fixed: a uniformly random cohort of exactly that many (today's, and DP accounting's default);
    # poisson: each device joins independently with probability cohort / devices, so cohorts vary
    sampling: str = setting(
        "fixed",
        "how each round's devices are drawn: a fixed-size cohort, or poisson "
        "(each device with probability cohort / devices)",
        choices=("fixed", "poisson"),
    )
    # one seed drives the partition, the model init, device selection and every device's shuffling
    seed: int = setting(
        0,
        "seed for partition, init, selection and shuffling",
        least=0,
        most=2**32 - 1,
        why="(TensorFlow's and the data shuffles' seeds are 32-bit)",
    )
    # below it the round is retried once, then the run stops (keeping every completed round on disk)
    min_devices: int = setting(1, "fewest devices that must report per round (else retry once, then stop)", least=1)
    # rounds in between record NaN test accuracy and loss; 1 = every round
    eval_every: int = setting(1, "evaluate the global model every R rounds and after the last", least=1)
    eval_initial: bool = setting(False, "also evaluate the initial model, recorded as round 0", switch=True)
    # 0: each device's personal model as its method keeps it (the global one for FedAvg), not fine-tuned
    personal_eval_epochs: int = setting(
        0,
        "personalised evaluation: each device fine-tunes its personal model this many epochs on its own "
        "data before scoring it on its own test split (every --eval-every round; needs a test split per device)",
        least=0,
    )
    # None = every device: a sample keeps a large fleet's evaluation short
    personal_eval_devices: int | None = setting(
        None, "personalised evaluation on a seeded sample of this many devices each time (default: all)", least=1
    )
    # the on-device training guide's scenario: a centrally trained model that the fleet personalises
    init_from: str | None = setting(
        None,
        "start the global model from another run's folder (its global.ckpt), a checkpoint file, or a Keras "
        "weights file (.weights.h5) of the model; default: the artifact's initial weights",
    )
    # a FedBuff server step at --buffer 10 takes ~30 ms, and committing one (8 files, each synced) ~5 ms of it
    commit_every: str | None = setting(
        None,
        "commit the run folder every N rounds (server steps under --mode async), or every S seconds ('5s'); "
        "a kill loses the rounds since the last commit, and --resume runs them again with the same results "
        "(default: once a second, '1s'; rounds of a second or more commit each; '1': every round)",
        resumable=True,
    )
    out: str | None = setting(None, "run folder (default results/<name>/<timestamp>); must not exist or be empty")
    name: str | None = setting(
        None,
        "experiment name, the run folder results/NAME/<time> (default: data_model_strategy)",
    )

    def check(self) -> None:
        if self.per_round is not None:  # before --min-devices, which is compared with it
            need(
                1 <= self.per_round <= self.devices,
                "per_round",
                f"must be between 1 and --devices ({self.devices})",
                self.per_round,
            )
            if self.fraction != 1.0:
                raise ConfigError("--per-round and --fraction both choose devices per round; give one of them")
        if self.min_devices > self.devices_per_round:
            raise ConfigError(
                f"--min-devices {self.min_devices} exceeds the {self.devices_per_round} devices selected per round"
            )
        if self.personal_eval_devices is not None:
            need(
                self.personal_eval_devices <= self.devices,
                "personal_eval_devices",
                f"must be at most --devices ({self.devices})",
                self.personal_eval_devices,
            )
        if self.init_from is not None:
            need(Path(self.init_from).exists(), "init_from", "no such file or folder", self.init_from)
        if self.commit_every is not None:
            parse_commit_every(self.commit_every)
        if self.name is not None:
            need(bool(self.name) and "/" not in self.name, "name", "must be a non-empty name without '/'", self.name)

    @property
    def devices_per_round(self) -> int:
        if self.per_round is not None:
            return self.per_round
        return max(1, round(self.fraction * self.devices))


def parse_commit_every(text: str | int) -> tuple[int, float]:
    """(rounds, seconds) of --commit-every: "N" commits every N rounds, "Ss" once S seconds have passed
    since the last commit (and the last round always); ConfigError otherwise."""
    value = str(text).strip()
    try:
        if value.endswith("s"):
            seconds = float(value[:-1])
            if math.isfinite(seconds) and seconds >= 0:
                return 0, seconds
        elif int(value) >= 1:
            return int(value), 0.0
    except ValueError:
        pass
    raise ConfigError(f"--commit-every must be a number of rounds (N >= 1) or of seconds ('5s', '0.5s'), got {text!r}")
