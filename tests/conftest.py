"""Tiny shared fixtures: a toy data set, the converted seed artifact (built once per session)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Conversions and latency tables are kept on disk across processes ($FEDSIM_CACHE): the suite keeps its own, made
# afresh each session and removed after it, so it neither reads nor fills the user's.
if "FEDSIM_CACHE" not in os.environ:
    os.environ["FEDSIM_CACHE"] = tempfile.mkdtemp(prefix="fedsim-test-cache-")
    atexit.register(shutil.rmtree, os.environ["FEDSIM_CACHE"], True)

import numpy as np
import pytest

from fedsim.checkpoint import scratch_dir
from fedsim.data import make_toy_images


@pytest.fixture(scope="session")
def toy():
    return make_toy_images(samples_per_class=40, test_per_class=20, seed=0)


@pytest.fixture(scope="session")
def artifact() -> bytes:
    from fedsim.model.convert import convert_to_tflite

    return convert_to_tflite()  # the seed MLP on 28x28 uint8 images, 10 classes, SGD lr 0.05


@pytest.fixture(scope="session")
def tensors_artifact() -> bytes:
    from fedsim.model.builders import ArtifactRecipe
    from fedsim.model.convert import convert_to_tflite

    return convert_to_tflite(ArtifactRecipe(checkpoint_format="tensors"))  # the guide's one tensor per weight


@pytest.fixture(params=["packed", "tensors"])
def any_runner(request, artifact, tensors_artifact):
    """The seed MLP's interpreter, once with each checkpoint format."""
    from fedsim.device import Runner

    return Runner(artifact if request.param == "packed" else tensors_artifact)


@pytest.fixture
def runner(artifact):
    from fedsim.device import Runner

    return Runner(artifact)


@pytest.fixture
def scratch(tmp_path):
    return tmp_path


@pytest.fixture
def shm_scratch():
    import shutil

    path = scratch_dir("fedsim-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def batch(ds, n: int = 32, offset: int = 0):
    """(uint8 images, int32 class ids): what the artifact's `train` takes."""
    return ds.x_train[offset : offset + n], ds.y_train[offset : offset + n]


@pytest.fixture
def weights_like():
    """Three hand-made weight sets with the shapes of a toy 2-tensor model."""

    def make(value: float) -> dict[str, np.ndarray]:
        return {"a/kernel": np.full((2, 3), value, np.float32), "a/bias": np.full((3,), value, np.float32)}

    return make
