"""What makes a cold start short: TFLite's interpreter without the TensorFlow package (same bits), and
conversions kept on disk across processes (the same artifact, no TensorFlow import on a hit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedsim.core.task import Task
from fedsim.model import cache
from fedsim.model.builders import ArtifactRecipe, build_logreg

# One device's work in a fresh process: restore the artifact's own weights, train two batches, save;
# prints which interpreter ran it, whether the TensorFlow package was imported, and the checkpoint.
DEVICE = """
import json, sys
import numpy as np
import pytest
from fedsim.device import Runner
artifact = open(sys.argv[1], "rb").read()
runner = Runner(artifact)
rng = np.random.default_rng(0)
x = rng.integers(0, 255, (32, 28, 28)).astype(np.uint8)
y = runner.labels(rng.integers(0, 10, 32))
losses = [float(runner.train(x, y)) for _ in range(2)]
runner.save(sys.argv[2])
print("OUT" + json.dumps({"class": type(runner.interpreter).__module__, "tensorflow": "tensorflow" in sys.modules,
                          "losses": losses}))
"""


def _device_run(artifact_path: Path, out: Path, **env: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", DEVICE, str(artifact_path), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("OUT")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return json.loads(line[3:])


def test_interpreter_without_the_tensorflow_package_computes_the_same_bits(artifact, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(artifact)
    light = _device_run(path, tmp_path / "light.ckpt")
    full = _device_run(path, tmp_path / "full.ckpt", FEDSIM_TFLITE_LOADER="tensorflow")
    assert light["class"] == "fedsim_tflite_runtime.interpreter" and not light["tensorflow"]
    assert full["class"] == "tensorflow.lite.python.interpreter" and full["tensorflow"]
    assert light["losses"] == full["losses"]  # train ran its Flex kernels in both
    assert (tmp_path / "light.ckpt").read_bytes() == (tmp_path / "full.ckpt").read_bytes()


def test_tensorflow_imported_after_the_light_interpreter_still_works(artifact, tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(artifact)
    code = (
        "import sys; from fedsim.device import Runner; a = open(sys.argv[1], 'rb').read(); Runner(a)\n"
        "import tensorflow as tf\n"
        "from fedsim.device.tflite_loader import interpreter_class\n"
        "assert interpreter_class() is tf.lite.Interpreter\n"
        "print(sorted(tf.lite.Interpreter(model_content=a).get_signature_list()))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'infer', 'restore', 'save', 'train'" in proc.stdout


BUILD = """
import sys, hashlib
from fedsim.model import cache
from fedsim.model.builders import ArtifactRecipe, build_logreg
from fedsim.core.task import Task
from fedsim.artifact.checks import identity
artifact = cache.build(ArtifactRecipe(build_logreg, Task((4, 4), "image", 3), seed=7))
print("OUT", hashlib.sha256(artifact).hexdigest(), identity(artifact), "tensorflow" in sys.modules)
"""


def _build(cache_dir: Path | str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", BUILD],
        capture_output=True,
        text=True,
        env={**os.environ, "FEDSIM_CACHE": str(cache_dir)},
        timeout=300,
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("OUT")), None)
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    return line.split()[1:]


def test_a_conversion_is_kept_on_disk_for_the_next_process(tmp_path):
    made, identity, imported = _build(tmp_path)
    assert imported == "True"  # converting needs TensorFlow
    assert len(list((tmp_path / "artifacts").glob("*.bin"))) == 1
    again, identity_again, imported_again = _build(tmp_path)
    assert (again, identity_again) == (made, identity)
    assert imported_again == "False"  # read from disk, its identity remembered: no TensorFlow


def test_a_damaged_cache_entry_is_converted_afresh(tmp_path):
    _, identity, _ = _build(tmp_path)
    (entry,) = (tmp_path / "artifacts").glob("*.bin")
    entry.write_bytes(entry.read_bytes()[:-10])  # torn
    _, rebuilt_identity, imported = _build(tmp_path)
    assert imported == "True" and rebuilt_identity == identity
    assert entry.read_bytes() != b"" and len(entry.read_bytes()) > 100  # overwritten whole


def test_the_disk_cache_can_be_turned_off(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDSIM_ARTIFACT_CACHE", "off")
    assert cache.cache_dir() is None
    monkeypatch.setenv("FEDSIM_ARTIFACT_CACHE", "on")
    monkeypatch.setenv("FEDSIM_CACHE", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "artifacts"


def test_a_recipe_key_differs_with_what_the_artifact_depends_on():
    base = ArtifactRecipe(build_logreg, Task((4, 4), "image", 3), seed=7)
    names = {
        cache._disk_name(cache.key(r))  # type: ignore[arg-type]
        for r in (
            base,
            ArtifactRecipe(build_logreg, Task((4, 4), "image", 3), seed=8),
            ArtifactRecipe(build_logreg, Task((4, 4), "image", 4), seed=7),
        )
    }
    assert len(names) == 3
    assert np.all([len(n) == 32 for n in names])


# A whole run in a fresh process (its own Ray), on the toy data set: what its start-up did and left.
RUN = """
import hashlib, json, sys
import fedsim
run = fedsim.run(dataset="toy_images", toy_samples=30, devices=6, rounds=2, hosts=2, seed=4, out=sys.argv[1],
                 progress=False)
maps = open("/proc/self/maps").read()
print("OUT" + json.dumps({
    "conversion": run.meta["startup_s"]["conversion"],
    "tensorflow": "tensorflow" in sys.modules,
    "tf_libraries": "_pywrap_tensorflow_internal" in maps,
    "global": hashlib.sha256(open(sys.argv[1] + "/global.ckpt", "rb").read()).hexdigest(),
    "accuracy": run.rounds["test_accuracy"].tolist(),
    "identity": json.load(open(sys.argv[1] + "/artifact.json")).get("identity"),
}))
"""


@pytest.mark.ray
def test_a_cold_start_from_the_cache_prepares_in_the_coordinator_with_the_same_results(tmp_path):
    def run(name: str) -> dict:
        proc = subprocess.run(
            [sys.executable, "-c", RUN, str(tmp_path / name)],
            capture_output=True,
            text=True,
            env={**os.environ, "FEDSIM_CACHE": str(tmp_path / "cache")},
            timeout=600,
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("OUT")), None)
        assert proc.returncode == 0 and line, proc.stderr[-3000:]
        return json.loads(line[3:])

    first, second = run("first"), run("second")
    assert first["conversion"] > 0  # an empty cache: a worker converted the model
    assert second["conversion"] == 0  # from the disk cache: the data was prepared here, the report by a host
    for found in (first, second):  # the coordinator loaded neither TensorFlow nor its libraries
        assert not found["tensorflow"] and not found["tf_libraries"]
    assert second["global"] == first["global"] and second["accuracy"] == first["accuracy"]
    assert second["identity"] == first["identity"] and first["identity"]
