"""fedsim.run wiring, in-process: both accumulations give the same model."""

import numpy as np

import fedsim
from fedsim.strategies import FedAvg


class FedAvgOfRows(FedAvg):
    """FedAvg from every update's vector instead of the hosts' running sums."""

    accumulate = "stack"


def test_host_partials_and_coordinator_fedavg_agree(tmp_path):
    settings = dict(dataset="toy_images", toy_samples=30, devices=6, rounds=2, seed=2, progress=False)
    on_hosts = fedsim.run(out=str(tmp_path / "a"), engine=fedsim.LocalEngine(2), **settings)
    on_coord = fedsim.run(out=str(tmp_path / "b"), engine=fedsim.LocalEngine(2), strategy=FedAvgOfRows(), **settings)
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
    meta["config"]["run"]["rounds"], meta["status"] = 4, "running"
    (cut.path / "config.json").write_text(json.dumps(meta))
    (cut.path / "resume").mkdir()
    (cut.path / "resume" / "round-2.ckpt").write_bytes((cut.path / "global.ckpt").read_bytes())

    resumed = fedsim.resume(cut.path, engine=fedsim.LocalEngine(3))
    columns = ["round", "test_accuracy", "test_loss", "train_loss", "devices_selected", "samples", "bytes_up"]
    assert resumed.rounds[columns].equals(straight.rounds[columns])
    assert resumed.devices.drop(columns=["train_s", "host"]).equals(straight.devices.drop(columns=["train_s", "host"]))
    assert resumed.meta["status"] == "completed" and resumed.meta["resumed"][0]["after_round"] == 2
    assert resumed.rounds["elapsed_s"].is_monotonic_increasing  # goes on across the resume
    assert (resumed.path / "global.ckpt").read_bytes() == (straight.path / "global.ckpt").read_bytes()


def test_resume_refuses_a_complete_run(tmp_path):
    import pytest

    done = fedsim.run(
        out=str(tmp_path / "done"),
        engine=fedsim.LocalEngine(),
        dataset="toy_images",
        devices=2,
        rounds=1,
        progress=False,
    )
    with pytest.raises(fedsim.RunFolderError, match="already complete; extend it with --rounds N"):
        fedsim.resume(done.path, engine=fedsim.LocalEngine())
    with pytest.raises(fedsim.RunFolderError, match="--rounds 1 is not more than the 1 rounds it has"):
        fedsim.resume(done.path, engine=fedsim.LocalEngine(), rounds=1)


def test_a_finished_run_extended_with_rounds_equals_the_straight_run(tmp_path):
    """--resume DIR --rounds N on a completed run: the rounds table and the model equal an N-round run's,
    also for a strategy with server state."""
    settings = dict(
        dataset="toy_images", toy_samples=20, devices=6, seed=5, fraction=0.5, progress=False, strategy="fedavgm"
    )
    straight = fedsim.run(out=str(tmp_path / "straight"), engine=fedsim.LocalEngine(2), rounds=4, **settings)
    short = fedsim.run(out=str(tmp_path / "short"), engine=fedsim.LocalEngine(2), rounds=2, **settings)
    assert short.meta["status"] == "completed" and not (short.path / "resume").exists()
    extended = fedsim.resume(short.path, engine=fedsim.LocalEngine(1), rounds=4)
    columns = ["round", "test_accuracy", "test_loss", "train_loss", "devices_selected", "samples", "bytes_up"]
    assert extended.rounds[columns].equals(straight.rounds[columns])
    assert (extended.path / "global.ckpt").read_bytes() == (straight.path / "global.ckpt").read_bytes()
    assert extended.config["rounds"] == 4 and extended.meta["status"] == "completed"


def nan_on_training():
    """The seed MLP with a hidden unit that is sqrt(x - 1e9): NaN in the forward pass, so the very
    first `train` call turns the weights NaN inside the .tflite."""
    import keras

    inputs = keras.Input((28, 28))
    hidden = keras.layers.Dense(16, activation="relu", name="hidden")(keras.layers.Flatten()(inputs))
    broken = keras.layers.Lambda(lambda t: keras.ops.sqrt(t - 1e9), name="broken")(hidden)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="out")(broken), name="nan")


def test_devices_whose_training_turns_nan_are_rejected_and_the_model_stays_finite(tmp_path):
    run = fedsim.run(
        dataset="toy_images",
        toy_samples=20,
        devices=4,
        rounds=2,
        model_builder=nan_on_training,
        out=str(tmp_path / "r"),
        engine=fedsim.LocalEngine(2),
        progress=False,
    )
    assert set(run.devices["status"]) == {"rejected"}
    assert run.devices["reason"].str.contains("holds NaN or Inf").all()
    assert (run.rounds["devices_accepted"] == 0).all()
    from fedsim.checkpoint import read_checkpoint_file

    assert all(np.isfinite(w).all() for w in read_checkpoint_file(run.path / "global.ckpt").values())


def test_synthetic_alpha_beta_with_logreg_is_naturally_partitioned_and_learns(tmp_path):
    run = fedsim.run(
        dataset="synthetic:1,1",
        model="logreg",
        devices=6,
        rounds=4,
        lr=0.05,
        seed=0,
        out=str(tmp_path / "s"),
        engine=fedsim.LocalEngine(2),
        progress=False,
    )
    assert run.config["partition"] == "natural" and run.config["model"] == "logreg"
    assert run.meta["task"] == {
        "input_shape": [60],
        "kind": "features",
        "num_classes": 10,
        "vocab_size": None,
        "input_dtype": "float32",
    }
    # one generated user per device: its own test split, scored every round
    assert (run.partition["test_samples"] > 0).all() and list(run.partition.filter(like="label_").columns)[
        -1
    ] == "label_9"
    assert run.rounds["device_acc_mean"].notna().all()
    assert run.rounds["test_accuracy"].iloc[-1] > 0.2  # chance is 0.1
    assert run.artifact["task"]["input_shape"] == [60] and run.artifact["parameters"] == 60 * 10 + 10


def test_arrays_from_python_run_with_a_user_builder_and_are_recorded_honestly(tmp_path):
    from user_models import build

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 5)) * 3
    y = rng.integers(0, 3, 300)
    x = centres[y] + rng.normal(size=(300, 5))
    data = fedsim.ArrayDataset(x[:240], y[:240], x[240:], y[240:], device_train=np.arange(240) % 4)
    run = fedsim.run(
        data=data,
        partition="natural",
        devices=4,
        rounds=3,
        model_builder=build,
        lr=0.1,
        out=str(tmp_path / "a"),
        engine=fedsim.LocalEngine(),
        progress=False,
    )
    assert run.config["dataset"] == "arrays" and run.config["model"] == "user_models:build"
    assert run.partition["samples"].tolist() == [60, 60, 60, 60]
    assert run.rounds["test_accuracy"].iloc[-1] > 0.6


def test_a_failed_start_leaves_no_folder_and_names_the_problem(tmp_path):
    import pytest
    from guide_artifact import build_guide_tflite

    from fedsim.artifact import ArtifactError

    broken = tmp_path / "broken.tflite"
    broken.write_bytes(build_guide_tflite(restore_assigns=False))
    with pytest.raises(ArtifactError, match="restore does not bring back"):
        fedsim.run(
            dataset="toy_images",
            toy_samples=5,
            devices=2,
            rounds=1,
            artifact=str(broken),
            out=str(tmp_path / "r"),
            engine=fedsim.LocalEngine(),
            progress=False,
        )
    assert not (tmp_path / "r").exists()
    few = fedsim.ArrayDataset(np.zeros((3, 2), np.float32), [0, 1, 0], np.zeros((2, 2), np.float32), [0, 1])
    with pytest.raises(fedsim.DataError, match="arrays has 3 training samples, too few to give 5 devices"):
        fedsim.run(data=few, devices=5, rounds=1, out=str(tmp_path / "f"), engine=fedsim.LocalEngine(), progress=False)
    assert not (tmp_path / "f").exists()


def test_eval_every_scores_every_rth_round_and_the_last(tmp_path):
    from fedsim.report.analysis import summary

    run = fedsim.run(
        out=str(tmp_path / "r"),
        engine=fedsim.LocalEngine(),
        dataset="toy_images",
        toy_samples=20,
        devices=4,
        rounds=5,
        eval_every=2,
        device_test_fraction=0.2,
        progress=False,
    )
    scored = run.rounds.set_index("round")["test_accuracy"].notna()
    assert scored.to_dict() == {1: False, 2: True, 3: False, 4: True, 5: True}
    assert run.rounds.set_index("round")["device_acc_mean"].notna().to_dict() == scored.to_dict()
    assert run.devices[run.devices["round"] == 3]["test_accuracy"].isna().all()
    assert run.final_accuracy == run.rounds["test_accuracy"].iloc[-1]
    table = summary(tmp_path / "r")
    assert table["final_accuracy"].iloc[0] == run.final_accuracy
    assert table["best_accuracy"].iloc[0] == run.rounds["test_accuracy"].max()


def test_results_do_not_depend_on_the_host_count_or_the_deal(tmp_path):
    """Skewed shards (quantity:1.0) and a per-round selection: one host, or three hosts dealt the
    devices by expected cost, give the same tables and the same final checkpoint, byte for byte."""
    settings = dict(
        dataset="toy_images",
        toy_samples=40,
        devices=12,
        per_round=7,
        rounds=3,
        seed=5,
        partition="quantity:1.0",
        progress=False,
    )
    one = fedsim.run(out=str(tmp_path / "one"), engine=fedsim.LocalEngine(1), **settings)
    three = fedsim.run(out=str(tmp_path / "three"), engine=fedsim.LocalEngine(3), **settings)
    assert sorted(three.devices["host"].unique()) == [0, 1, 2]
    columns = ["round", "test_accuracy", "test_loss", "train_loss", "samples", "bytes_up"]
    assert one.rounds[columns].equals(three.rounds[columns])
    assert one.devices.drop(columns=["train_s", "host"]).equals(three.devices.drop(columns=["train_s", "host"]))
    assert (one.path / "global.ckpt").read_bytes() == (three.path / "global.ckpt").read_bytes()


def test_a_run_records_the_strategy_and_folder_that_actually_ran(tmp_path):
    settings = dict(
        dataset="toy_images", toy_samples=20, devices=3, rounds=1, progress=False, engine=fedsim.LocalEngine()
    )
    custom = fedsim.run(out=str(tmp_path / "custom"), strategy=FedAvgOfRows(), **settings)
    plain = fedsim.run(out=str(tmp_path / "plain"), **settings)
    table = fedsim.load_runs(tmp_path)
    names = dict(zip(table["run"].map(lambda r: r.rsplit("/", 1)[-1]), table["strategy"]))
    assert names["plain"] == "fedavg" and names["custom"].endswith(":FedAvgOfRows")
    assert custom.config["out"] == str(tmp_path / "custom") and plain.meta["strategy_name"] == "fedavg"


def test_report_shows_status_and_every_setting_that_differs(tmp_path):
    import json

    from fedsim.report.analysis import report, summary

    settings = dict(
        dataset="toy_images", toy_samples=20, devices=3, rounds=2, progress=False, engine=fedsim.LocalEngine()
    )
    fedsim.run(out=str(tmp_path / "a"), lr=0.01, **settings)
    cut = fedsim.run(out=str(tmp_path / "b"), lr=0.1, **settings)
    meta = json.loads((cut.path / "config.json").read_text())
    meta["status"] = "interrupted"
    (cut.path / "config.json").write_text(json.dumps(meta))
    table = summary(tmp_path)
    assert table.loc["a", "lr"] == 0.01 and table.loc["b", "lr"] == 0.1
    assert table.loc["a", "status"] == "completed" and table.loc["b", "status"] == "interrupted"
    assert "rounds" in table and "model" not in table  # the same in both: not repeated
    assert "interrupted" in report(tmp_path) and fedsim.load_runs(tmp_path)["status"].nunique() == 2


def test_plot_axes_show_whole_rounds_and_the_fleet_sizes_that_ran():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedsim.report.analysis import _fleet_ticks, _integer_rounds

    fig, (a, b) = plt.subplots(1, 2)
    a.plot([1, 2, 3], [0.1, 0.2, 0.3])
    _integer_rounds(a)
    fig.canvas.draw()
    assert all(float(t).is_integer() for t in a.get_xticks())
    b.plot([20, 40, 50], [1, 2, 3])
    b.set_xscale("log")
    _fleet_ticks(b, [20, 40, 50])
    fig.canvas.draw()
    assert list(b.get_xticks()) == [20, 40, 50] and [t.get_text() for t in b.get_xticklabels()] == ["20", "40", "50"]
    plt.close(fig)


def test_eval_initial_records_the_untrained_model_as_round_0(tmp_path):
    settings = dict(dataset="toy_images", toy_samples=20, devices=4, rounds=2, seed=1, progress=False)
    plain = fedsim.run(out=str(tmp_path / "plain"), engine=fedsim.LocalEngine(), **settings)
    with_0 = fedsim.run(out=str(tmp_path / "zero"), engine=fedsim.LocalEngine(), eval_initial=True, **settings)
    assert with_0.rounds["round"].tolist() == [0, 1, 2]
    first = with_0.rounds.iloc[0]
    assert first["devices_selected"] == 0 and first["samples"] == 0 and 0 <= first["test_accuracy"] <= 0.3
    columns = ["round", "test_accuracy", "test_loss", "samples"]
    assert with_0.rounds[columns].iloc[1:].reset_index(drop=True).equals(plain.rounds[columns])
    assert not (with_0.devices["round"] == 0).any()
    # the CLI switch
    from fedsim.cli import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["run", "--eval-initial"])).eval_initial is True
