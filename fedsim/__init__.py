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

from importlib import metadata as _metadata

from fedsim.core.task import Task, TaskError
from fedsim.data import ArrayDataset, DataError, DataNotFoundError, Dataset
from fedsim.engine.base import Engine
from fedsim.engine.local import LocalEngine
from fedsim.experiment.config import Config, ConfigError
from fedsim.experiment.simulation import resume, run
from fedsim.experiment.sweep import resume_sweep, sweep
from fedsim.model.builders import ArtifactRecipe, ModelError, Optimizer
from fedsim.results import Run, RunFolderError, load_run, load_runs
from fedsim.strategies import STRATEGIES, Aggregate, DevicePlan, FedAvg, Strategy, make_strategy

try:  # one version source: pyproject.toml, as installed
    __version__ = _metadata.version("fedsim")
except _metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"


def inspect(*args, **kwargs):
    """Report on a .tflite (bytes, file or run folder): see fedsim.artifact.inspect. Loads TensorFlow."""
    from fedsim.artifact import inspect as impl

    return impl(*args, **kwargs)


def release() -> None:
    """Let go of what `fedsim.run` keeps for the next run in this process (a warm start): the parked
    hosts (~0.5 GB each) and the Ray session it started. The next run starts cold."""
    from fedsim.engine.ray_session import SESSION

    SESSION.shutdown()


def load_model(*args, **kwargs):
    """The trained Keras model of a run folder: see fedsim.artifact.load_model. Loads TensorFlow."""
    from fedsim.artifact import load_model as impl

    return impl(*args, **kwargs)


__all__ = [
    "STRATEGIES",
    "Aggregate",
    "ArrayDataset",
    "ArtifactRecipe",
    "Config",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "Dataset",
    "DevicePlan",
    "Engine",
    "FedAvg",
    "LocalEngine",
    "ModelError",
    "Optimizer",
    "Run",
    "RunFolderError",
    "Strategy",
    "Task",
    "TaskError",
    "__version__",
    "inspect",
    "load_model",
    "load_run",
    "load_runs",
    "make_strategy",
    "release",
    "resume",
    "resume_sweep",
    "run",
    "sweep",
]
