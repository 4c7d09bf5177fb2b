"""`fedsim` command line: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, NoReturn

from fedsim.config import Config, ConfigError

# Help for the flags of `fedsim run`: one flag per Config field.
_HELP = {
    "devices": "simulated phones in the fleet",
    "rounds": "federated rounds",
    "fraction": "share of devices selected per round, in (0, 1]",
    "local_epochs": "passes over its shard each device makes per round",
    "batch_size": "mini-batch size of the train signature",
    "lr": "learning rate of the on-device optimiser baked into the .tflite",
    "checkpoint_format": "packed (all weights in one tensor: a cheaper restore) or tensors (the guide's, one per weight)",
    "device_optimizer": "on-device optimiser: sgd, momentum or adam (state restarts every device round)",
    "device_momentum": "momentum of --device-optimizer momentum",
    "device_beta1": "Adam's beta1 (--device-optimizer adam)",
    "device_beta2": "Adam's beta2 (--device-optimizer adam)",
    "device_epsilon": "Adam's epsilon (--device-optimizer adam)",
    "seed": "seed for partition, init, selection and shuffling",
    "hosts": "Ray actors hosting devices (default: one per CPU)",
    "address": "join an existing Ray cluster (e.g. auto or 10.0.0.1:6379)",
    "data_dir": "folder with the Fashion-MNIST IDX .gz files",
    "dataset": "fashion_mnist, synthetic:ALPHA,BETA (FedProx) or toy_images",
    "data": "your own data: an .npz with x_train, y_train, x_test, y_test (optional device_train, device_test)",
    "artifact": "run a .tflite made elsewhere as it is (checked before any round)",
    "partition": "how the training set is split: iid, natural, dirichlet:A, shards:K, classes:K, quantity:S "
    "(default: natural for synthetic, else iid)",
    "min_samples": "fewest samples any device may hold",
    "per_round": "devices selected per round, as a count (instead of --fraction)",
    "device_test_fraction": "share of each device's data kept as its own test split (per-device accuracy)",
    "strategy": "fedavg, fedavgm, fedadam, fedyogi, fedadagrad, qfedavg, fedprox, scaffold, fedmedian, trimmedmean, "
    "krum, multikrum or bulyan",
    "server_lr": "server learning rate (fedavgm, scaffold 1.0; fedadam, fedyogi, fedadagrad 0.01)",
    "server_momentum": "fedavgm's server momentum (0.9)",
    "beta1": "first-moment decay of fedadam/fedyogi/fedadagrad (0.9)",
    "beta2": "second-moment decay of fedadam/fedyogi (0.99)",
    "tau": "adaptivity of fedadam/fedyogi/fedadagrad (1e-3)",
    "q": "qfedavg's fairness exponent (1.0; 0 = unweighted mean)",
    "lipschitz": "qfedavg's L (default 1 / --lr)",
    "trim": "trimmedmean: share cut from each end per coordinate (0.2)",
    "assumed_byzantine": "krum/multikrum/bulyan: Byzantine updates assumed per round (default --byzantine x selected)",
    "krum_m": "multikrum: updates averaged (default n - f)",
    "mu": "fedprox: proximal weight in the devices' train (0.01)",
    "byzantine": "share of devices (seeded) that attack with --attack",
    "attack": "signflip, gaussian, labelflip or alie",
    "attack_scale": "signflip factor (4), gaussian std (1), or alie's z (default: the paper's)",
    "fleet": "device profiles for the simulated clock: phones, skewed, uniform, FILE.csv or fedscale:CAPACITY[,BEHAVIOUR]",
    "latency": "pin the simulated compute to a latency table (JSON restore/train/save ms, or an artifact.json)",
    "deadline": "simulated seconds a round may last (needs --fleet)",
    "straggler": "drop (discard) or partial (keep the steps done by the deadline)",
    "over_select": "select this many times the devices kept; the first to finish are kept",
    "model": "mlp, cnn, logreg, or your Keras builder as package.module:function (it receives the Task)",
    "out": "run folder (default results/<name>/<timestamp>); must not exist or be empty",
    "name": "experiment name (default run folder)",
    "toy_samples": "samples per class of the toy_images data set",
    "round_timeout": "seconds before a silent host is restarted and its devices marked failed",
    "tensorboard": "also write each round's scalars as TensorBoard event files under DIR (tensorboard --logdir DIR)",
    "mlflow": "also log the run to MLflow at this tracking URI (e.g. sqlite:///mlflow.db), experiment --name",
    "mlflow_experiment": "the MLflow experiment to log in (default: --name; a sweep: the sweep's --name)",
    "eval_every": "evaluate the global model every R rounds and after the last (others record NaN accuracy)",
    "eval_initial": "also evaluate the initial model, recorded as round 0",
    "min_devices": "fewest devices that must report per round (else retry once, then stop)",
    "max_update_norm": "reject device updates farther than this (L2) from the global model",
    "clip_update_norm": "scale device updates down to this L2 norm before averaging",
}


_SWITCHES = ("eval_initial",)  # boolean settings: a flag without a value on `fedsim run`


def _switch(text: str) -> bool:
    if text.lower() in ("true", "1", "yes", "on"):
        return True
    if text.lower() in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


def _type_of(name: str) -> Any:
    if name in _SWITCHES:
        return _switch
    if name in (
        "fraction",
        "lr",
        "round_timeout",
        "max_update_norm",
        "clip_update_norm",
        "device_test_fraction",
        "device_momentum",
        "device_beta1",
        "device_beta2",
        "device_epsilon",
        "server_lr",
        "server_momentum",
        "beta1",
        "beta2",
        "tau",
        "q",
        "lipschitz",
        "trim",
        "mu",
        "byzantine",
        "attack_scale",
        "deadline",
        "over_select",
    ):
        return float
    if name in (
        "devices",
        "rounds",
        "local_epochs",
        "batch_size",
        "seed",
        "hosts",
        "toy_samples",
        "min_devices",
        "min_samples",
        "per_round",
        "eval_every",
        "assumed_byzantine",
        "krum_m",
    ):
        return int
    return str


class _Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a mistyped flag."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            import difflib

            command = self._command()
            known = _long_options(command) if command is not None else _long_options(self)
            for word in message.split(":", 1)[1].split():
                flag = word.split("=")[0]
                if not flag.startswith("--"):
                    continue
                elsewhere = [name for name, p in _subcommands(self).items() if flag in _long_options(p)]
                if command is not None and elsewhere:  # a flag of another command, not a typo
                    message += f" ({flag} is a flag of fedsim {' / '.join(elsewhere)}, not of fedsim {command.prog.split()[-1]})"
                    break
                close = difflib.get_close_matches(flag, known, 1)
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        super().error(message)

    def _command(self) -> argparse.ArgumentParser | None:
        """The subcommand the command line names (its flags are the ones to suggest from)."""
        commands = _subcommands(self)
        return next((commands[a] for a in getattr(self, "_argv", sys.argv[1:]) if a in commands), None)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_known_args(args, namespace)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name ({} if it has none)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every --flag of the parser and of its subcommands."""
    out = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    for child in _subcommands(parser).values():
        out += _long_options(child)
    return sorted(set(out))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fedsim",
        description="Federated learning on simulated phones running the TFLite on-device training artifact.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"fedsim {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run one experiment", description="Run one experiment; flags override --config.")
    run.add_argument(
        "--config", metavar="FILE.toml", help="settings file with the same keys as the flags (underscores)"
    )
    for f in fields(Config):
        if f.name in _SWITCHES:  # a switch: present = on
            run.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                action="store_const",
                const=True,
                default=None,
                help=_HELP.get(f.name, f.name),
            )
            continue
        run.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=_type_of(f.name),
            default=None,
            help=_HELP.get(f.name, f.name) + ("" if "default" in _HELP.get(f.name, "") else f" (default: {f.default})"),
        )
    run.add_argument(
        "--engine",
        choices=("ray", "local"),
        default="ray",
        help="ray: hosts are Ray actors (default); local: hosts run one after another in this "
        "process, no Ray (debugging, tiny runs); results are the same",
    )
    run.add_argument(
        "--resume",
        metavar="DIR",
        help="continue an interrupted run after its last completed round "
        "(its own settings; only --hosts and --address may change), or extend a finished one with "
        "--rounds N",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    sw = sub.add_parser(
        "sweep",
        help="run a grid of experiments in one Ray session",
        description="Run every point of the grid: any run setting may be a comma-separated list "
        "(--lr 0.01,0.1 --local-epochs 1,5), or a [sweep] table of lists in --config.",
    )
    sw.add_argument("--config", metavar="FILE.toml", help="base settings, and a [sweep] table of lists to vary")
    for f in fields(Config):
        if f.name in ("partition", "seed", "out", "name"):
            continue
        sw.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            help=_HELP.get(f.name, f.name) + " (a comma-separated list sweeps it)",
        )
    sw.add_argument("--name", help="experiment name (the default sweep folder is results/sweeps/<name>/<timestamp>)")
    sw.add_argument("--partition", dest="partitions", help="comma-separated partition specs (default iid)")
    sw.add_argument("--seeds", help="comma-separated seeds (default 0)")
    sw.add_argument("--out", help="sweep folder (default results/sweeps/<name>/<timestamp>)")
    sw.add_argument(
        "--engine",
        choices=("ray", "local"),
        default="ray",
        help="ray: every point on one Ray session (default); local: each point's hosts in this process",
    )
    sw.add_argument("--resume", metavar="DIR", help="run the points of an earlier sweep that did not complete")
    sw.add_argument("--no-progress", action="store_true", help="no progress bars")

    for name, what in (("plot", "write PNG plots of"), ("report", "print a markdown table of")):
        cmd = sub.add_parser(name, help=f"{what} a run or sweep folder")
        cmd.add_argument("path", help="a run folder, a sweep folder, or a folder of runs")
        if name == "plot":
            cmd.add_argument("--out", help="folder for the PNGs (default: the given folder)")

    ins = sub.add_parser(
        "inspect",
        help="report on a .tflite artifact: signatures, ops, size, latency, parity",
        description="Signatures with shapes and dtypes, the ops of each (and which need the Flex "
        "delegate), file and checkpoint size, parameters, and latency on this machine (one thread).",
    )
    ins.add_argument("path", help="a .tflite file, or a run folder (its model.tflite)")
    ins.add_argument(
        "--parity",
        type=int,
        default=0,
        metavar="N",
        help="also train the same model N steps in TensorFlow from the same weights and report the "
        "drift (needs a run folder, whose config names the model; from Python, recipe=)",
    )
    ins.add_argument("--repeats", type=int, default=20, help="calls per latency median (default 20)")
    ins.add_argument("--json", metavar="FILE", help="also write the report as JSON")

    data = sub.add_parser("data", help="data set utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="download Fashion-MNIST into the Keras cache (needs a network)")
    fetch.add_argument("--dest", help="folder to download into (default ~/.keras/datasets/fashion-mnist)")
    data_sub.add_parser("where", help="print where Fashion-MNIST is found")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {f.name: getattr(args, f.name) for f in fields(Config) if getattr(args, f.name) is not None}
    if args.config:
        return Config.from_toml(args.config, **overrides)
    return Config(**overrides)


def _run(args: argparse.Namespace) -> int:
    import fedsim

    if args.resume:
        others = [
            f.name
            for f in fields(Config)
            if f.name not in ("hosts", "address", "rounds") and getattr(args, f.name) is not None
        ]
        if others or args.config:
            flags = ", ".join("--" + n.replace("_", "-") for n in others) or "--config"
            raise ConfigError(
                f"--resume uses the run's own settings; drop {flags} (only --hosts, --address, and "
                "--rounds to extend it, may change)"
            )
        engine = fedsim.LocalEngine(args.hosts or 1) if args.engine == "local" else None
        result = fedsim.resume(
            args.resume,
            engine=engine,
            progress=not args.no_progress,
            hosts=args.hosts,
            address=args.address,
            rounds=args.rounds,
        )
        config = Config.from_dict(result.config)
    else:
        config = config_from_args(args)
        if args.engine == "local" and config.address:
            raise ConfigError("--engine local runs in this process; drop --address (or use --engine ray)")
        engine = fedsim.LocalEngine(config.hosts or 1) if args.engine == "local" else None
        result = fedsim.run(config, engine=engine, progress=not args.no_progress)
    last = result.rounds.iloc[-1]
    print(
        f"fedsim: {len(result.rounds)} rounds on {config.devices} devices; "
        f"final test accuracy {last.test_accuracy:.4f}, test loss {last.test_loss:.4f}"
    )
    print(f"fedsim: results in {result.path}")
    print(f"fedsim: python -c \"import fedsim; r = fedsim.load_run('{result.path}'); print(r.rounds)\"")
    if result.meta.get("mlflow_run_id") and config.mlflow:
        print(
            f"fedsim: MLflow run {result.meta['mlflow_run_id']} in experiment {config.mlflow_experiment or config.name} "
            f"(mlflow ui --backend-store-uri {config.mlflow})"
        )
    return 0


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _sweep_values(name: str, text: str) -> list[Any]:
    """A sweep flag's comma-separated values, each of the setting's type. A data set spec such as
    synthetic:1,1 keeps its own comma."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if name == "dataset":  # synthetic:ALPHA,BETA: glue BETA back to its spec
        merged: list[str] = []
        for p in parts:
            if (
                merged
                and merged[-1].startswith("synthetic:")
                and "," not in merged[-1]
                and p.replace(".", "", 1).isdigit()
            ):
                merged[-1] += "," + p
            else:
                merged.append(p)
        parts = merged
    kind = _type_of(name)
    try:
        return [kind(p) for p in parts]
    except ValueError:
        raise ConfigError(
            f"--{name.replace('_', '-')} takes comma-separated values of type {kind.__name__}, got {text!r}"
        ) from None


def _sweep(args: argparse.Namespace) -> int:
    import tomllib
    from pathlib import Path

    from fedsim.sweep import resume_sweep, sweep

    if args.resume:
        table = resume_sweep(args.resume, progress=not args.no_progress)
        folder = Path(args.resume)
    else:
        file_values: dict[str, Any] = {}
        grid: dict[str, list[Any]] = {}
        if args.config:
            try:
                file_values = tomllib.loads(Path(args.config).read_text())
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise ConfigError(f"--config {args.config}: {e}") from None
            table_grid = file_values.pop("sweep", {})
            if not isinstance(table_grid, dict):
                raise ConfigError(f"--config {args.config}: [sweep] must be a table of lists")
            grid.update({k: v if isinstance(v, list) else [v] for k, v in table_grid.items()})
        overrides: dict[str, Any] = {}
        for f in fields(Config):
            text = getattr(args, f.name, None)
            if f.name in ("partition", "seed", "out") or text is None:
                continue
            if f.name == "name":
                overrides["name"] = text
                continue
            values = _sweep_values(f.name, text)
            if len(values) == 1:
                overrides[f.name] = values[0]
                grid.pop(f.name, None)
            else:
                grid[f.name] = values
        if args.seeds:
            grid["seed"] = _ints(args.seeds, "--seeds")
        if args.partitions:
            grid["partition"] = [p.strip() for p in args.partitions.split(",") if p.strip()]
        for key in [k for k, v in grid.items() if len(v) == 1 and k not in ("devices", "partition", "seed")]:
            file_values[key] = grid.pop(key)[0]
        # Comparing strategies: their settings stay in the grid, where each point keeps only those its
        # strategy takes (fedsim.sweep); in the base they would be checked against the first strategy.
        comparing = len(grid.get("strategy", [])) > 1
        if comparing:
            from fedsim.strategies import STRATEGY_PARAMS

            for key in STRATEGY_PARAMS:
                for source in (overrides, file_values):
                    if key in source and key not in grid:
                        grid[key] = [source.pop(key)]
        firsts = {k: v[0] for k, v in grid.items() if not (comparing and k in STRATEGY_PARAMS)}
        base = Config.from_dict({**file_values, **overrides, **firsts})
        out = args.out or str(Path("results") / "sweeps" / base.name / _stamp())
        table = sweep(base, out=out, progress=not args.no_progress, grid=grid, engine=args.engine)
        folder = Path(out)
    failed = table[table["status"] == "failed"] if "status" in table else table.iloc[:0]
    print(f"fedsim: sweep of {table['point'].nunique()} points, {failed['point'].nunique()} failed")
    for _, row in failed.iterrows():
        print(f"fedsim: failed {row['point']}: {row['error']}")
    print(f"fedsim: sweep in {folder}; fedsim report {folder}")
    return 0


def _stamp() -> str:
    import datetime as dt

    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _analysis(args: argparse.Namespace) -> int:
    from fedsim.analysis import plot, report

    if args.command == "plot":
        for path in plot(args.path, args.out):
            print(f"fedsim: wrote {path}")
    else:
        print(report(args.path))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from fedsim.artifact import inspect

    if args.parity < 0 or args.repeats < 1:
        raise ConfigError("--parity must be >= 0 and --repeats >= 1")
    report = inspect(args.path, parity=args.parity, repeats=args.repeats)
    print(report)
    if args.json:
        report.write(args.json)
        print(f"fedsim: wrote {args.json}")
    return 0


def _data(args: argparse.Namespace) -> int:
    from fedsim.data import fetch_fashion_mnist, find_fashion_mnist

    if args.data_command == "fetch":
        print(f"fedsim: Fashion-MNIST in {fetch_fashion_mnist(args.dest)}")
    else:
        print(find_fashion_mnist())
    return 0


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("fedsim")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    from fedsim.artifact import ArtifactError  # TensorFlow only loads when a report or check runs
    from fedsim.coordinator import RoundFailedError
    from fedsim.data import DataError, DataNotFoundError, PartitionError
    from fedsim.engine.base import EngineError
    from fedsim.model.builders import ModelError
    from fedsim.results import RunFolderError
    from fedsim.task import TaskError

    user_errors: tuple[type[BaseException], ...] = (
        ConfigError,
        DataError,
        DataNotFoundError,
        RunFolderError,
        ConnectionError,
        RoundFailedError,
        PartitionError,
        FileNotFoundError,
        ModelError,
        TaskError,
        ArtifactError,
        EngineError,
    )
    try:
        commands = {
            "run": _run,
            "sweep": _sweep,
            "plot": _analysis,
            "report": _analysis,
            "data": _data,
            "inspect": _inspect,
        }
        return commands[args.command](args)
    except user_errors as e:
        if args.debug:
            raise
        print(f"fedsim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        folder = _interrupted_folder(args)
        if folder is not None:
            print(
                f"fedsim: interrupted; {folder} keeps every completed round; continue with: "
                f"fedsim run --resume {folder}",
                file=sys.stderr,
            )
        else:
            print("fedsim: interrupted", file=sys.stderr)
        return 130


def _interrupted_folder(args: argparse.Namespace) -> str | None:
    """The run folder an interrupted `fedsim run` can be resumed from, if it committed a round."""
    import json
    from pathlib import Path

    from fedsim.results import _CREATED

    if getattr(args, "command", None) != "run":
        return None
    candidates = [Path(args.resume)] if getattr(args, "resume", None) else sorted(_CREATED)
    for folder in candidates:
        try:
            if json.loads((folder / "config.json").read_text()).get("rounds_completed"):
                return str(folder)
        except (OSError, ValueError):
            continue
    return None


if __name__ == "__main__":
    sys.exit(main())
