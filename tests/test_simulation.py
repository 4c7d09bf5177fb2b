"""fedsim.run wiring, in-process: both aggregation paths give the same model."""

import numpy as np

import fedsim
from fedsim.strategies import FedAvg


class FedAvgOnCoordinator(FedAvg):
    linear = False


def test_host_partials_and_coordinator_fedavg_agree(tmp_path):
    settings = dict(dataset="toy_images", toy_samples=30, devices=6, rounds=2, seed=2, progress=False)
    on_hosts = fedsim.run(out=str(tmp_path / "a"), engine=fedsim.LocalEngine(2), **settings)
    on_coord = fedsim.run(out=str(tmp_path / "b"), engine=fedsim.LocalEngine(2), strategy=FedAvgOnCoordinator(), **settings)
    np.testing.assert_allclose(on_hosts.rounds["test_loss"], on_coord.rounds["test_loss"], rtol=1e-5)
    np.testing.assert_array_equal(on_hosts.devices["checkpoint_bytes"], on_coord.devices["checkpoint_bytes"])
    assert on_hosts.rounds["elapsed_s"].is_monotonic_increasing


def test_resume_continues_a_cut_run_to_the_same_tables(tmp_path):
    """Cut a run after round 2 of 4 by hand (as a kill between rounds leaves it), resume it, and
    compare with the uninterrupted run."""
    import json

    settings = dict(dataset="toy_images", toy_samples=20, devices=6, rounds=4, seed=3, fraction=0.5, progress=False)
    straight = fedsim.run(out=str(tmp_path / "straight"), engine=fedsim.LocalEngine(2), **settings)
    assert not (straight.path / "resume").exists()  # a completed run keeps only global.ckpt

    cut = fedsim.run(out=str(tmp_path / "cut"), engine=fedsim.LocalEngine(2), **{**settings, "rounds": 2})
    meta = json.loads((cut.path / "config.json").read_text())
    meta["config"]["rounds"], meta["status"] = 4, "running"
    (cut.path / "config.json").write_text(json.dumps(meta))
    (cut.path / "resume").mkdir()
    (cut.path / "resume" / "round-2.ckpt").write_bytes((cut.path / "global.ckpt").read_bytes())

    resumed = fedsim.resume(cut.path, engine=fedsim.LocalEngine(3))
    columns = ["round", "test_accuracy", "test_loss", "train_loss", "devices_selected", "samples", "bytes_up"]
    assert resumed.rounds[columns].equals(straight.rounds[columns])
    assert resumed.devices.drop(columns=["train_s", "host"]).equals(straight.devices.drop(columns=["train_s", "host"]))
    assert resumed.meta["status"] == "completed" and resumed.meta["resumed"][0]["after_round"] == 2
    assert (resumed.path / "global.ckpt").read_bytes() == (straight.path / "global.ckpt").read_bytes()


def test_resume_refuses_a_complete_run(tmp_path):
    import pytest

    done = fedsim.run(out=str(tmp_path / "done"), engine=fedsim.LocalEngine(), dataset="toy_images", devices=2, rounds=1, progress=False)
    with pytest.raises(fedsim.RunFolderError, match="already complete"):
        fedsim.resume(done.path, engine=fedsim.LocalEngine())


def nan_on_training():
    """The seed MLP with a hidden unit that is sqrt(x - 1e9): NaN in the forward pass, so the very
    first `train` call turns the weights NaN inside the .tflite."""
    import keras

    inputs = keras.Input((28, 28))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(keras.layers.Flatten()(inputs))
    broken = keras.layers.Lambda(lambda t: keras.ops.sqrt(t - 1e9), name="broken")(hidden)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="out")(broken), name="nan")


def test_devices_whose_training_turns_nan_are_rejected_and_the_model_stays_finite(tmp_path):
    run = fedsim.run(dataset="toy_images", toy_samples=20, devices=4, rounds=2, model_builder=nan_on_training,
                     out=str(tmp_path / "r"), engine=fedsim.LocalEngine(2), progress=False)
    assert set(run.devices["status"]) == {"rejected"}
    assert run.devices["reason"].str.contains("holds NaN or Inf").all()
    assert (run.rounds["devices_accepted"] == 0).all()
    from fedsim.checkpoint import read_checkpoint_file

    assert all(np.isfinite(w).all() for w in read_checkpoint_file(run.path / "global.ckpt").values())
