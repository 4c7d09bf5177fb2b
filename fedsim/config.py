"""The settings of one experiment: a frozen dataclass, validated on creation, to/from TOML and dict.

Field names are the config keys; CLI flags are the same words with dashes.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting is missing, unknown or out of range; the message names the flag."""


def _is_import_path(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep) and all(p.isidentifier() for p in module.split(".") + attr.split("."))


def _strategy_params() -> tuple[str, ...]:
    from fedsim.strategies import STRATEGY_PARAMS

    return STRATEGY_PARAMS


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_type(key: str, annotation: str, value: Any) -> None:
    """A config file's value of the wrong type, named as the key it was given under (not as a flag),
    with the type it has: "lr must be a number, got the string '0.1'"."""
    if value is None and "None" in annotation:
        return
    kinds = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}
    wanted = next((t for t in ("bool", "int", "float", "str") if annotation.startswith(t)), None)
    if wanted is None:
        return
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "str": lambda v: isinstance(v, str),
    }[wanted](value)
    if not ok:
        got = {
            str: "the string",
            bool: "the boolean",
            int: "the integer",
            float: "the number",
            list: "the list",
            dict: "the table",
        }.get(type(value), type(value).__name__)
        raise ConfigError(f"config key {key} must be {kinds[wanted]}, got {got} {value!r}")


@dataclass(frozen=True)
class Config:
    # 100 phones each holding 600 Fashion-MNIST images: a fleet, yet a round costs ~1 s on 2 cores.
    devices: int = 100
    # 40 rounds take FedAvg on these shards past 0.82 test accuracy in well under a minute on 2 cores.
    rounds: int = 40
    # share of the devices selected each round (seeded); 1.0 = every device every round.
    fraction: float = 1.0
    # passes over its shard a device makes per round, as the guide's train loop does.
    local_epochs: int = 1
    # mini-batch fed to the train signature; 32 is the usual on-device batch.
    batch_size: int = 32
    # learning rate of the on-device optimiser baked into the .tflite train signature.
    lr: float = 0.05
    # on-device optimiser: sgd (the guide's), momentum or adam. Its state restarts at every device's
    # round and never enters the checkpoint a device uploads.
    device_optimizer: str = "sgd"
    # momentum of --device-optimizer momentum (0.9: the usual heavy-ball value).
    device_momentum: float = 0.9
    # Adam's decay rates and epsilon for --device-optimizer adam (Keras' defaults).
    device_beta1: float = 0.9
    device_beta2: float = 0.999
    device_epsilon: float = 1e-7
    # how the artifact's `save` lays out its checkpoint: packed (every weight in one tensor: `restore`
    # is one Restore op, several times cheaper) or tensors (one per weight, the guide's form).
    checkpoint_format: str = "packed"
    # one seed drives the partition, the model init, device selection and every device's shuffling.
    seed: int = 0
    # Ray actors hosting the devices; None = one per CPU Ray sees (never more than devices).
    hosts: int | None = None
    # an existing Ray cluster to join ("auto" or "host:port"); None = start a local Ray for the run.
    address: str | None = None
    # folder holding the Fashion-MNIST IDX files; None = $FEDSIM_DATA, then the standard places.
    data_dir: str | None = None
    # data set: fashion_mnist (real), synthetic:ALPHA,BETA (FedProx's Synthetic(alpha, beta), generated
    # from the seed, one user per device) or toy_images (small 28x28, generated; for tests and demos).
    dataset: str = "fashion_mnist"
    # your own arrays: an .npz with x_train, y_train, x_test, y_test (optional device_train /
    # device_test ids for --partition natural, num_classes); the dataset is then recorded as "npz".
    data: str | None = None
    # how the training set is split across devices: iid, natural, dirichlet:A, shards:K, classes:K,
    # quantity:S. None = natural for synthetic:ALPHA,BETA (one generated user per device), else iid.
    partition: str | None = None
    # every device holds at least this many samples (Dirichlet draws are repeated until it holds).
    min_samples: int = 1
    # share of each device's samples kept as its own test split (0 = none); the selected devices then
    # score every new global model on it, which is how non-IID fairness is read.
    device_test_fraction: float = 0.0
    # devices selected per round, as a count; None = use --fraction.
    per_round: int | None = None
    # aggregation strategy by name (see fedsim.strategies.STRATEGIES): fedavg, fedavgm, fedadam, fedyogi,
    # fedadagrad, qfedavg, fedprox and scaffold (these two change the devices' train), fedmedian, trimmedmean, krum,
    # multikrum, bulyan. In a TOML file also a table: [strategy] name = "fedadam", server_lr = 0.01.
    strategy: str = "fedavg"
    # The strategies' hyperparameters (None = the strategy's default; giving one the strategy does
    # not take is an error). server_lr: the server's step (fedavgm, scaffold 1.0; fedadam/fedyogi/fedadagrad 0.01).
    server_lr: float | None = None
    # fedavgm's momentum on the pseudo-gradient (0.9).
    server_momentum: float | None = None
    # decay rates and adaptivity of fedadam / fedyogi / fedadagrad (0.9, 0.99, 1e-3; Reddi et al. 2021).
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None
    # qfedavg's fairness exponent q (1.0; 0 = the unweighted mean) and L (default 1 / --lr).
    q: float | None = None
    lipschitz: float | None = None
    # trimmedmean: share of values cut from each end per coordinate (0.2).
    trim: float | None = None
    # krum / multikrum / bulyan: Byzantine updates assumed per round (default: --byzantine x selected).
    assumed_byzantine: int | None = None
    # multikrum: updates averaged (default n - f).
    krum_m: int | None = None
    # fedprox: weight of the proximal term mu/2 * ||w - w_global||^2 in the devices' train (0.01).
    mu: float | None = None
    # share of devices (seeded, fixed for the run) that attack with --attack; 0 = none.
    byzantine: float = 0.0
    # what the --byzantine devices do: signflip, gaussian, labelflip or alie (see fedsim.strategies.attacks).
    attack: str | None = None
    # signflip's factor (4) or gaussian's standard deviation (1); for alie, a z replacing the paper's.
    attack_scale: float | None = None
    # model: mlp, cnn, logreg (see fedsim.model.MODELS) or your builder as package.module:function,
    # which receives the Task and returns an uncompiled Keras model.
    model: str = "mlp"
    # evaluate the global model on the test set every this many rounds (and always after the last);
    # rounds in between record NaN test accuracy and loss. 1 = every round.
    eval_every: int = 1
    # also evaluate the initial model and record it as round 0 (test accuracy and loss; no devices).
    eval_initial: bool = False
    # seconds a round may take before a host that has not answered is restarted and its devices
    # recorded as failed; None = wait as long as it takes.
    round_timeout: float | None = None
    # fewest devices that must report in a round; below it the round is retried once, then the run
    # stops (keeping every completed round on disk).
    min_devices: int = 1
    # reject a device update whose L2 distance from the global model exceeds this; None = no bound.
    max_update_norm: float | None = None
    # scale a device update down to this L2 norm before averaging; None = no clipping.
    clip_update_norm: float | None = None
    # also write each round's scalars as TensorBoard event files under this folder (one subfolder per
    # run; `tensorboard --logdir DIR`); None = none.
    tensorboard: str | None = None
    # also log each run to MLflow at this tracking URI (sqlite:///mlflow.db, http://host:5000, ...) in the
    # experiment named by `name`: settings, per-round scalars, the run's files; None = none. Needs mlflow.
    mlflow: str | None = None
    # the MLflow experiment the run is logged in; None = `name` (a sweep: the sweep's name, one experiment
    # for all its points).
    mlflow_experiment: str | None = None
    # The simulated clock (see fedsim.fleet). Device profiles: a built-in set (phones, skewed, uniform),
    # FILE.csv (device_id, speed, down_kbps, up_kbps, availability, dropout) or fedscale:CAPACITY[,BEHAVIOUR]
    # (FedScale's trace files); None = no simulated clock (every device equal and always there).
    fleet: str | None = None
    # a latency table to pin the simulated compute to: JSON {"restore", "train", "save"} in ms (or a run's
    # artifact.json); None = the artifact's latencies measured at the start of the run (one thread).
    latency: str | None = None
    # simulated seconds a round may last; devices that cannot finish by then are stragglers.
    deadline: float | None = None
    # what a straggler's work becomes: drop (discarded) or partial (the steps it finished by the deadline).
    straggler: str = "drop"
    # select this many times the devices a round keeps; the first to finish are kept (FedScale's
    # over-commitment).
    over_select: float = 1.0
    # run folder; None = results/<name>/<timestamp>.
    out: str | None = None
    # experiment name, used for the default run folder.
    name: str = "fashion_mnist_fedavg"
    # samples per class of the toy_images data set (training).
    toy_samples: int = 200
    # a .tflite made outside fedsim, run as it is (its model and optimiser replace --model, --lr and
    # --device-optimizer); checked before any round.
    artifact: str | None = None

    def __post_init__(self) -> None:
        # Resolved once, so config.json records what ran: an .npz is the data set.
        if self.data is not None and self.dataset == "fashion_mnist":
            object.__setattr__(self, "dataset", "npz")
        self.validate()

    @property
    def partition_spec(self) -> str:
        """--partition, or the one the data set implies: natural for synthetic:ALPHA,BETA (one generated
        user per device), iid otherwise. A run records this resolved value."""
        if self.partition is not None:
            return self.partition
        return "natural" if self.dataset.startswith("synthetic:") else "iid"

    def validate(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                value = getattr(self, name)
                raise ConfigError(f"{_flag(name)} {what}, got {value!r}")

        for name in (
            "devices",
            "rounds",
            "local_epochs",
            "batch_size",
            "seed",
            "toy_samples",
            "min_devices",
            "eval_every",
        ):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), name, "must be an integer")
        need(self.devices >= 1, "devices", "must be at least 1")
        need(self.rounds >= 1, "rounds", "must be at least 1")
        need(self.local_epochs >= 1, "local_epochs", "must be at least 1")
        need(self.batch_size >= 1, "batch_size", "must be at least 1")
        need(self.seed >= 0, "seed", "must be >= 0")
        need(self.toy_samples >= 1, "toy_samples", "must be at least 1")
        need(self.min_devices >= 1, "min_devices", "must be at least 1")
        need(self.eval_every >= 1, "eval_every", "must be at least 1")
        need(isinstance(self.eval_initial, bool), "eval_initial", "must be true or false")
        if self.per_round is not None:  # before --min-devices, which is compared with it
            need(
                isinstance(self.per_round, int) and 1 <= self.per_round <= self.devices,
                "per_round",
                f"must be between 1 and --devices ({self.devices})",
            )
        if self.min_devices > self.devices_per_round:
            raise ConfigError(
                f"--min-devices {self.min_devices} exceeds the {self.devices_per_round} devices selected per round"
            )
        if self.round_timeout is not None:
            need(
                isinstance(self.round_timeout, (int, float)) and self.round_timeout > 0,
                "round_timeout",
                "must be a positive number of seconds",
            )
        for name in ("max_update_norm", "clip_update_norm"):
            value = getattr(self, name)
            if value is not None:
                need(isinstance(value, (int, float)) and value > 0, name, "must be a positive number")
        need(isinstance(self.fraction, (int, float)), "fraction", "must be a number")
        need(0.0 < self.fraction <= 1.0, "fraction", "must be in (0, 1]")
        need(isinstance(self.lr, (int, float)) and self.lr > 0, "lr", "must be a positive number")
        if self.hosts is not None:
            need(isinstance(self.hosts, int) and self.hosts >= 1, "hosts", "must be at least 1")
            if self.hosts > self.devices:
                raise ConfigError(
                    f"--hosts {self.hosts} exceeds --devices {self.devices}; each host needs at least one device"
                )
        from fedsim.data import check_dataset_name
        from fedsim.data.partition import PartitionError, parse_spec

        need(isinstance(self.dataset, str), "dataset", "must be a data set name")
        try:
            check_dataset_name(self.dataset)
            parse_spec(self.partition_spec)
        except (PartitionError, ValueError) as e:
            raise ConfigError(str(e)) from None
        if self.data is not None:
            need(isinstance(self.data, str) and self.data.endswith(".npz"), "data", "must be an .npz file")
            need(self.dataset == "npz", "dataset", "must be left out with --data (the .npz is the data set)")
        need(self.dataset != "npz" or self.data is not None, "dataset", "npz needs --data FILE.npz")
        if self.artifact is not None:
            need(
                isinstance(self.artifact, str) and self.artifact.endswith(".tflite"),
                "artifact",
                "must be a .tflite file",
            )
        from fedsim.model.builders import OPTIMIZERS

        need(self.device_optimizer in OPTIMIZERS, "device_optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
        from fedsim.model.signatures import CHECKPOINT_FORMATS

        need(
            self.checkpoint_format in CHECKPOINT_FORMATS,
            "checkpoint_format",
            f"must be one of {', '.join(CHECKPOINT_FORMATS)}",
        )
        need(
            isinstance(self.device_momentum, (int, float)) and 0 <= self.device_momentum < 1,
            "device_momentum",
            "must be in [0, 1)",
        )
        for name in ("device_beta1", "device_beta2"):
            need(
                isinstance(getattr(self, name), (int, float)) and 0 <= getattr(self, name) < 1,
                name,
                "must be in [0, 1)",
            )
        need(
            isinstance(self.device_epsilon, (int, float)) and self.device_epsilon > 0,
            "device_epsilon",
            "must be a positive number",
        )
        need(isinstance(self.min_samples, int) and self.min_samples >= 1, "min_samples", "must be at least 1")
        need(
            isinstance(self.device_test_fraction, (int, float)) and 0 <= self.device_test_fraction < 1,
            "device_test_fraction",
            "must be in [0, 1)",
        )
        if self.per_round is not None:
            if self.fraction != 1.0:
                raise ConfigError("--per-round and --fraction both choose devices per round; give one of them")
        from fedsim.model import MODELS
        from fedsim.strategies import STRATEGIES, make_strategy
        from fedsim.strategies.attacks import ATTACKS

        need(self.strategy in STRATEGIES, "strategy", f"must be one of {', '.join(sorted(STRATEGIES))}")
        try:
            strategy = make_strategy(self.strategy, **{n: getattr(self, n) for n in _strategy_params()})
        except (TypeError, ValueError) as e:
            raise ConfigError(str(e)) from None
        if strategy.variant is not None and self.artifact is not None:
            raise ConfigError(
                f"--strategy {self.strategy} changes the devices' train signature, which an --artifact "
                "made elsewhere does not have; drop --artifact"
            )
        need(isinstance(self.byzantine, (int, float)) and 0 <= self.byzantine < 1, "byzantine", "must be in [0, 1)")
        if self.attack is not None:
            need(self.attack in ATTACKS, "attack", f"must be one of {', '.join(ATTACKS)}")
            need(self.byzantine > 0, "byzantine", f"must be above 0 with --attack {self.attack}")
        elif self.byzantine > 0:
            raise ConfigError(f"--byzantine {self.byzantine} needs --attack ({', '.join(ATTACKS)})")
        if self.attack_scale is not None:
            need(
                isinstance(self.attack_scale, (int, float)) and self.attack_scale > 0,
                "attack_scale",
                "must be a positive number",
            )
            need(
                self.attack is not None and self.attack != "labelflip",
                "attack_scale",
                "applies to --attack signflip, gaussian or alie",
            )
        need(
            isinstance(self.model, str) and (self.model in MODELS or _is_import_path(self.model)),
            "model",
            f"must be one of {', '.join(sorted(MODELS))} or package.module:function",
        )
        need(bool(self.name) and "/" not in self.name, "name", "must be a non-empty name without '/'")
        from fedsim.fleet import STRAGGLER_POLICIES, check_spec, read_latency

        for name, what in (("tensorboard", "a folder"), ("mlflow", "a tracking URI"), ("mlflow_experiment", "a name")):
            value = getattr(self, name)
            need(value is None or (isinstance(value, str) and value.strip() != ""), name, f"must be {what}")
        if self.fleet is not None:
            need(isinstance(self.fleet, str), "fleet", "must be a fleet name or file")
            check_spec(self.fleet)
        need(
            isinstance(self.over_select, (int, float)) and self.over_select >= 1,
            "over_select",
            "must be at least 1 (it picks that many times the devices a round keeps)",
        )
        need(self.straggler in STRAGGLER_POLICIES, "straggler", f"must be one of {', '.join(STRAGGLER_POLICIES)}")
        if self.deadline is not None:
            need(
                isinstance(self.deadline, (int, float)) and self.deadline > 0,
                "deadline",
                "must be a positive number of simulated seconds",
            )
        for name, on in (
            ("deadline", self.deadline is not None),
            ("latency", self.latency is not None),
            ("over_select", self.over_select != 1),
            ("straggler", self.straggler != "drop"),
        ):
            if on and self.fleet is None:
                raise ConfigError(f"{_flag(name)} needs --fleet (the device profiles of the simulated clock)")
        if self.straggler == "partial" and self.deadline is None:
            raise ConfigError("--straggler partial needs --deadline (the time by which work is cut)")
        if self.latency is not None:
            read_latency(self.latency)

    @property
    def devices_per_round(self) -> int:
        if self.per_round is not None:
            return self.per_round
        return max(1, round(self.fraction * self.devices))

    # ---- dict / TOML --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        if isinstance(data.get("strategy"), dict):  # [strategy] name = "fedadam", server_lr = 0.01, ...
            table = dict(data["strategy"])
            if "name" not in table:
                raise ConfigError('config table [strategy] needs name = "..." (e.g. name = "fedadam")')
            odd = sorted(set(table) - {"name", *_strategy_params()})
            if odd:
                raise ConfigError(
                    f"[strategy] {', '.join(odd)}: not a strategy setting; known: name, {', '.join(_strategy_params())}"
                )
            clash = sorted(set(table) & set(data) - {"name"})
            if clash:
                raise ConfigError(f"{', '.join(clash)} given both in [strategy] and at the top level")
            data = {**{k: v for k, v in data.items() if k != "strategy"}, "strategy": table.pop("name"), **table}
        if "synthetic_samples" in data and "toy_samples" not in data:
            # config.json of an earlier fedsim, where "synthetic" named today's toy_images
            data = {("toy_samples" if k == "synthetic_samples" else k): v for k, v in data.items()}
            if data.get("dataset") == "synthetic":
                data["dataset"] = "toy_images"
        unknown = sorted(set(data) - known)
        if unknown:
            import difflib

            hints = [
                f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, known, 1)) else k
                for k in unknown
            ]
            raise ConfigError(f"unknown config key(s) {', '.join(hints)}; known keys: {', '.join(sorted(known))}")
        for f in fields(cls):
            if f.name in data:
                _check_type(f.name, str(f.type), data[f.name])
        return cls(**data)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **overrides: Any) -> Config:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {p}: no such file")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config {p}: not valid TOML ({e})") from None
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)
