"""The `fedsim` command line's parser. The flags of `fedsim run` and `fedsim sweep` are generated from
the settings' declarations (fedsim.experiment.config.config_fields): their names, types, help and defaults are
written once, where each part declares its settings."""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any, NoReturn

from fedsim.core.settings import Field, flag
from fedsim.experiment.config import config_fields
from fedsim.model.formats import RUNTIMES

SWEEP_OWN = ("partition", "seed", "out", "name")  # settings `fedsim sweep` takes by flags of its own


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for a mistyped flag."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            command = self._command()
            known = _long_options(command) if command is not None else _long_options(self)
            for word in message.split(":", 1)[1].split():
                name = word.split("=")[0]
                if not name.startswith("--"):
                    continue
                elsewhere = [n for n, p in subcommands(self).items() if name in _long_options(p)]
                if command is not None and elsewhere:  # a flag of another command, not a typo
                    message += (
                        f" ({name} is a flag of fedsim {' / '.join(elsewhere)}, not of fedsim "
                        f"{command.prog.split()[-1]})"
                    )
                    break
                close = difflib.get_close_matches(name, known, 1)
                if close:
                    message += f" (did you mean {close[0]}?)"
                    break
        super().error(message)

    def _command(self) -> argparse.ArgumentParser | None:
        """The subcommand the command line names (its flags are the ones to suggest from)."""
        commands = subcommands(self)
        return next((commands[a] for a in getattr(self, "_argv", sys.argv[1:]) if a in commands), None)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        return super().parse_known_args(args, namespace)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name ({} if it has none)."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out.update(action.choices)
    return out


def _long_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every --flag of the parser and of its subcommands."""
    out = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
    for child in subcommands(parser).values():
        out += _long_options(child)
    return sorted(set(out))


def _help(f: Field) -> str:
    """A setting's help with its default, where the help does not already say it."""
    if "default" in f.help or f.switch:
        return f.help
    return f"{f.help} (default: {f.default})"


def _add_settings(parser: argparse.ArgumentParser, sweep: bool) -> None:
    for name, f in config_fields().items():
        if not f.cli or (sweep and name in SWEEP_OWN):
            continue
        if sweep:
            parser.add_argument(
                flag(name), dest=name, default=None, help=_help(f) + " (a comma-separated list sweeps it)"
            )
        elif f.switch:  # present = on
            parser.add_argument(flag(name), dest=name, action="store_const", const=True, default=None, help=_help(f))
        else:
            parser.add_argument(flag(name), dest=name, type=f.type, default=None, help=_help(f))


def version() -> str:
    from fedsim import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fedsim",
        description="Federated learning on simulated phones running the TFLite on-device training artifact.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"fedsim {version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="run one experiment", description="Run one experiment; flags override --config.")
    run.add_argument(
        "--config", metavar="FILE.toml", help="settings file with the same keys as the flags (underscores)"
    )
    _add_settings(run, sweep=False)
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
    _add_settings(sw, sweep=True)
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
    ins.add_argument(
        "path",
        help="a .tflite or .pte file, a run folder (its model.tflite or model.pte), or a built-in: mlp, cnn, logreg",
    )
    ins.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="tflite",
        help="a built-in model as which runtime's artifact (executorch: its PyTorch twin's training program)",
    )
    ins.add_argument(
        "--parity",
        type=int,
        default=0,
        metavar="N",
        help="also train the same model N steps in TensorFlow (a .pte: in eager PyTorch) from the same weights "
        "and report the drift (needs a built-in or a run folder, whose config names the model; from Python, recipe=)",
    )
    ins.add_argument("--repeats", type=int, default=20, help="calls per latency median (default 20)")
    ins.add_argument("--json", metavar="FILE", help="also write the report as JSON")

    part = sub.add_parser(
        "partition",
        help="the label skew a run had: per device and for the fleet",
        description="Label entropy, labels held and EMD to the fleet's label mix per device, "
        "and how many groups of devices share labels, from the run's partition.parquet.",
    )
    part.add_argument("path", help="a run folder")
    part.add_argument("--plot", action="store_true", help="also write partition.png, the device-by-label matrix")

    data = sub.add_parser("data", help="data set utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help="download Fashion-MNIST into the Keras cache (needs a network)")
    fetch.add_argument("--dest", help="folder to download into (default ~/.keras/datasets/fashion-mnist)")
    data_sub.add_parser("where", help="print where Fashion-MNIST is found")
    return parser
