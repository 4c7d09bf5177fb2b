"""fedsim: a federated-learning simulator whose devices run the real TFLite on-device-training artifact.

The public API, for notebooks and scripts:

    import fedsim
    run = fedsim.run(devices=100, rounds=10, out="results/try1")
    run.rounds            # one row per round (pandas)
    fedsim.load_run("results/try1").devices
"""

from fedsim.config import Config, ConfigError
from fedsim.data import DataNotFoundError
from fedsim.engine.base import Engine
from fedsim.engine.local import LocalEngine
from fedsim.results import Run, RunFolderError, load_run, load_runs
from fedsim.simulation import run
from fedsim.strategies import FedAvg, Strategy, Update

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
    "run",
]
