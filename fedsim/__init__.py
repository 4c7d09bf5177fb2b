"""fedsim: a federated-learning simulator whose devices run the real TFLite on-device-training artifact.

The public API, for notebooks and scripts:

    import fedsim
    run = fedsim.run(devices=100, rounds=10, out="results/try1")
    run.rounds            # one row per round (pandas)
    fedsim.load_run("results/try1").devices
"""

import os

# TensorFlow's C++ INFO/WARNING lines (oneDNN, CPU features, converter dumps) bury the progress bar;
# errors still show. Must be set before TensorFlow is first imported; an explicit setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fedsim.config import Config, ConfigError  # noqa: E402
from fedsim.data import DataNotFoundError  # noqa: E402
from fedsim.engine.base import Engine  # noqa: E402
from fedsim.engine.local import LocalEngine  # noqa: E402
from fedsim.results import Run, RunFolderError, load_run, load_runs  # noqa: E402
from fedsim.simulation import resume, run  # noqa: E402
from fedsim.strategies import FedAvg, Strategy, Update  # noqa: E402
from fedsim.sweep import sweep  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "DataNotFoundError",
    "Engine",
    "FedAvg",
    "LocalEngine",
    "Run",
    "RunFolderError",
    "Strategy",
    "Update",
    "__version__",
    "load_run",
    "load_runs",
    "resume",
    "run",
    "sweep",
]
