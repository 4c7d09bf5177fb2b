"""`fedsim` command line: argument parsing (fedsim.cli.parser, generated from the settings'
declarations) and the commands (fedsim.cli.commands). User errors are one line naming the flag."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from fedsim.cli.commands import config_from_args
from fedsim.cli.parser import build_parser, version
from fedsim.core.settings import ConfigError

__all__ = ["build_parser", "config_from_args", "main", "version"]


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a scheduler, `kill`) stops a run as Ctrl-C does: resumable


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    args = parser.parse_args(argv)
    from fedsim.artifact import ArtifactError  # TensorFlow only loads when a report or check runs
    from fedsim.cli import commands
    from fedsim.core.task import TaskError
    from fedsim.data import DataError, DataNotFoundError, PartitionError
    from fedsim.engine.base import EngineError
    from fedsim.loop.coordinator import RoundFailedError
    from fedsim.model.builders import ModelError
    from fedsim.results import RunFolderError

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
    run = {
        "run": commands.run,
        "sweep": commands.sweep,
        "plot": commands.analysis,
        "report": commands.analysis,
        "data": commands.data,
        "partition": commands.partition,
        "inspect": commands.inspect,
    }
    try:
        return run[args.command](args)
    except user_errors as e:
        if args.debug:
            raise
        print(f"fedsim: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine said no (a full disk, a read-only folder): one line, not a traceback
        if args.debug:
            raise
        print(f"fedsim: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        folder = _interrupted_folder(args)
        if args.command == "sweep" and _sweep_folder() is not None:
            print(
                f"fedsim: interrupted; the sweep in {_sweep_folder()} keeps its completed points; continue "
                f"with: fedsim sweep --resume {_sweep_folder()}",
                file=sys.stderr,
            )
        elif folder is not None:
            print(
                f"fedsim: interrupted; {folder} keeps every completed round; continue with: "
                f"fedsim run --resume {folder}",
                file=sys.stderr,
            )
        else:
            print("fedsim: interrupted", file=sys.stderr)
        return 130


def _sweep_folder() -> Path | None:
    from fedsim.experiment.sweep import ACTIVE

    return ACTIVE[-1] if ACTIVE else None


def _interrupted_folder(args: argparse.Namespace) -> str | None:
    """The run folder an interrupted `fedsim run` can be resumed from, if it committed a round."""
    from fedsim.results import created_folders

    if getattr(args, "command", None) != "run":
        return None
    candidates = [Path(args.resume)] if getattr(args, "resume", None) else created_folders()
    for folder in candidates:
        try:
            if json.loads((folder / "config.json").read_text()).get("rounds_completed"):
                return str(folder)
        except (OSError, ValueError):
            continue
    return None


if __name__ == "__main__":
    sys.exit(main())
