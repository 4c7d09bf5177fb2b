import json
import sys

import numpy as np
import pytest

import fedsim
from fedsim.results import DEVICE_COLUMNS, ROUND_COLUMNS, RunFolderError, claim_run_folder


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    runs = []
    for devices in (4, 8):
        runs.append(
            fedsim.run(
                dataset="toy_images",
                toy_samples=20,
                devices=devices,
                rounds=2,
                seed=1,
                out=str(root / f"d{devices}"),
                engine=fedsim.LocalEngine(2),
                progress=False,
            )
        )
    return root, runs


def test_run_folder_is_self_describing(two_runs):
    _, (run, _) = two_runs
    names = {p.name for p in run.path.iterdir()}
    assert {"config.json", "rounds.parquet", "devices.parquet", "model.tflite", "global.ckpt"} <= names
    meta = json.loads((run.path / "config.json").read_text())
    settings = meta["config"]["run"]
    assert meta["status"] == "completed" and settings["devices"] == 4 and settings["seed"] == 1
    assert {"fedsim", "tensorflow", "ray", "numpy"} <= set(meta["versions"])
    assert meta["hosts"] == 2 and meta["rounds_completed"] == 2


def test_load_run_tables_carry_the_documented_columns(two_runs):
    _, (run, _) = two_runs
    loaded = fedsim.load_run(run.path)
    assert list(loaded.rounds.columns) == ROUND_COLUMNS
    assert list(loaded.devices.columns) == DEVICE_COLUMNS
    assert len(loaded.rounds) == 2 and len(loaded.devices) == 2 * 4
    assert sorted(loaded.devices["host"].unique()) == [0, 1]
    assert (loaded.devices["checkpoint_bytes"] > 0).all()
    assert loaded.config["rounds"] == 2


def test_the_final_checkpoint_restores_into_the_saved_artifact(two_runs):
    from fedsim.device import Runner

    _, (run, _) = two_runs
    runner = Runner((run.path / "model.tflite").read_bytes())
    restored = runner.restore(run.path / "global.ckpt")
    assert len(restored) == 4


def test_load_runs_concatenates_with_config_columns(two_runs):
    root, _ = two_runs
    df = fedsim.load_runs(str(root / "d*"))
    assert len(df) == 4
    assert sorted(df["devices"].unique()) == [4, 8]
    assert {"round", "test_accuracy", "lr", "seed", "run"} <= set(df.columns)
    assert df.groupby("devices")["round"].max().tolist() == [2, 2]
    assert len(fedsim.load_runs(root)) == 4  # a folder of runs works too


def test_an_existing_non_empty_out_is_never_overwritten(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(RunFolderError, match="already exists and is not empty"):
        fedsim.run(dataset="toy_images", devices=2, rounds=1, out=str(out), engine=fedsim.LocalEngine(), progress=False)
    assert (out / "keep.txt").read_text() == "precious" and len(list(out.iterdir())) == 1
    assert claim_run_folder(tmp_path / "empty") == tmp_path / "empty"


def test_load_run_of_a_non_run_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a fedsim run folder"):
        fedsim.load_run(tmp_path)


def test_partition_table_is_saved_and_loaded(two_runs):
    _, (run, _) = two_runs
    part = fedsim.load_run(run.path).partition
    assert list(part.columns[:2]) == ["device_id", "samples"] and len(part) == 4
    assert part["samples"].sum() == run.meta["dataset"]["train_samples"]
    assert (part.filter(like="label_").sum(axis=1) == part["samples"]).all() and (part["test_samples"] == 0).all()


def test_a_non_iid_run_records_its_skew(tmp_path):
    run = fedsim.run(
        dataset="toy_images",
        toy_samples=30,
        devices=5,
        rounds=1,
        partition="classes:2",
        per_round=3,
        out=str(tmp_path / "c2"),
        engine=fedsim.LocalEngine(2),
        progress=False,
    )
    labels_per_device = (run.partition.filter(like="label_") > 0).sum(axis=1)
    assert (labels_per_device == 2).all()
    assert run.rounds["devices_selected"].tolist() == [3]


def test_per_device_evaluation_on_their_own_test_splits(tmp_path):
    run = fedsim.run(
        dataset="toy_images",
        toy_samples=40,
        devices=6,
        rounds=2,
        partition="classes:2",
        device_test_fraction=0.25,
        per_round=4,
        out=str(tmp_path / "p"),
        engine=fedsim.LocalEngine(2),
        progress=False,
    )
    assert run.devices["test_accuracy"].between(0, 1).all() and len(run.devices) == 8
    r = run.rounds.iloc[-1]
    assert r.device_acc_p10 <= r.device_acc_mean <= r.device_acc_p90
    # each device keeps floor(1/4) of its shard to test on
    part = run.partition
    whole = part["samples"] + part["test_samples"]
    assert (part["test_samples"] == (whole * 0.25).astype(int)).all() and part["test_samples"].min() > 0


def test_without_device_tests_the_spread_columns_are_empty(two_runs):
    _, (run, _) = two_runs
    assert run.rounds["device_acc_mean"].isna().all() and run.devices["test_accuracy"].isna().all()


def test_plot_draws_the_per_device_spread_when_measured(tmp_path):
    from fedsim.report.analysis import plot

    fedsim.run(
        dataset="toy_images",
        toy_samples=30,
        devices=4,
        rounds=2,
        device_test_fraction=0.3,
        out=str(tmp_path / "runs" / "a"),
        engine=fedsim.LocalEngine(2),
        progress=False,
    )
    written = plot(tmp_path / "runs", tmp_path / "png")
    assert [p.name for p in written] == ["accuracy.png", "device_spread.png"]
    assert all(p.stat().st_size > 10_000 for p in written)


def _round_rows(r, devices=3):
    round_row = {"round": r, "test_accuracy": 0.1 * r, "test_loss": 1.0 / r, "elapsed_s": float(r)}
    device_rows = [
        {"round": r, "device_id": d, "host": d % 2, "samples": 10 + d, "status": "ok", "reason": ""}
        for d in range(devices)
    ]
    return round_row, device_rows


def test_each_round_is_one_part_and_pandas_reads_the_table_in_one_call(tmp_path):
    import pandas as pd

    from fedsim.results import RunWriter

    writer = RunWriter(claim_run_folder(tmp_path / "run"), {"config": {}})
    for r in range(1, 6):
        writer.record_round(*_round_rows(r), f"ckpt{r}".encode())
    writer.close()
    parts = sorted(p.name for p in (tmp_path / "run" / "devices.parquet").iterdir())
    assert parts == [f"round-{r:08d}.parquet" for r in range(1, 6)]
    devices = pd.read_parquet(tmp_path / "run" / "devices.parquet")  # the folder, as one table
    assert len(devices) == 15 and devices["round"].tolist() == sorted(devices["round"].tolist())
    run = fedsim.load_run(tmp_path / "run")
    assert run.rounds["round"].tolist() == [1, 2, 3, 4, 5] and list(run.rounds.columns) == ROUND_COLUMNS
    assert run.rounds["devices_selected"].isna().all()  # columns a round did not fill are null, not missing
    assert (tmp_path / "run" / "global.ckpt").read_bytes() == b"ckpt5"
    # the writer keeps no rows of earlier rounds
    assert not any(isinstance(v, list) and v for v in vars(writer).values())


def test_resume_drops_parts_of_rounds_that_never_committed(tmp_path):
    from fedsim.results import RunWriter

    folder = claim_run_folder(tmp_path / "run")
    writer = RunWriter(folder, {"config": {}})
    for r in range(1, 5):
        writer.record_round(*_round_rows(r), b"c")
    writer.close()
    RunWriter(folder, json.loads((folder / "config.json").read_text()), resume_from=2).close()
    run = fedsim.load_run(folder)
    assert run.rounds["round"].tolist() == [1, 2] and sorted(run.devices["round"].unique()) == [1, 2]


def test_a_folder_written_as_single_tables_still_loads_and_resumes(tmp_path):
    """Run folders of earlier versions hold rounds.parquet / devices.parquet as single files."""
    import pandas as pd

    from fedsim.results import RunWriter

    folder = claim_run_folder(tmp_path / "old")
    rounds, devices = zip(*(_round_rows(r) for r in (1, 2, 3)))
    pd.DataFrame(list(rounds)).reindex(columns=ROUND_COLUMNS).to_parquet(folder / "rounds.parquet")
    pd.DataFrame([d for ds in devices for d in ds]).reindex(columns=DEVICE_COLUMNS).to_parquet(
        folder / "devices.parquet"
    )
    (folder / "config.json").write_text(json.dumps({"config": {}, "rounds_completed": 3}))
    assert fedsim.load_run(folder).rounds["round"].tolist() == [1, 2, 3]

    writer = RunWriter(folder, {"config": {}}, resume_from=2)
    writer.record_round(*_round_rows(3, devices=2), b"c")
    writer.close()
    run = fedsim.load_run(folder)
    assert (folder / "devices.parquet").is_dir()
    assert run.rounds["round"].tolist() == [1, 2, 3]
    assert run.devices.groupby("round").size().tolist() == [3, 3, 2]  # round 3 as re-run


@pytest.mark.parametrize("form", ["packed", "tensors"])
def test_the_trained_keras_model_comes_back_from_the_run_folder(tmp_path, form):
    import numpy as np

    from fedsim.data import DataRecipe

    run = fedsim.run(
        dataset="toy_images",
        toy_samples=50,
        devices=4,
        rounds=3,
        seed=2,
        checkpoint_format=form,
        out=str(tmp_path / "r"),
        engine=fedsim.LocalEngine(),
        progress=False,
    )
    model = run.keras_model()
    data = DataRecipe("toy_images", seed=2, toy_samples=50).load()  # the run's own data set
    probs = model.predict(data.x_test.astype(np.float32) / 255.0, verbose=0)
    accuracy = float(np.mean(np.argmax(probs, axis=1) == data.y_test))
    # the Keras model scores the test set as the run's evaluation through the artifact did
    assert abs(accuracy - run.final_accuracy) < 0.02 and accuracy > 0.5
    assert fedsim.load_model(run.path).count_params() == model.count_params()


def test_tensorboard_event_files_carry_each_rounds_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = fedsim.run(
        dataset="toy_images",
        toy_samples=20,
        devices=3,
        rounds=3,
        eval_every=2,
        tensorboard=str(tmp_path / "tb"),
        out=str(tmp_path / "r"),
        engine=fedsim.LocalEngine(),
        progress=False,
    )
    events = EventAccumulator(str(tmp_path / "tb" / "r"))
    events.Reload()
    accuracy = [(e.step, round(e.value, 6)) for e in events.Scalars("test_accuracy")]
    expected = [(int(r), round(a, 6)) for r, a in zip(run.rounds["round"], run.rounds["test_accuracy"]) if a == a]
    assert accuracy == expected and [s for s, _ in accuracy] == [2, 3]  # round 1 was not evaluated
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2, 3]


def test_a_table_folder_with_parts_from_an_earlier_version_reads_every_column(tmp_path):
    """A resumed run of an earlier version has parts without the newer columns: they read as missing
    values, and the newer parts keep theirs (pyarrow alone would read with the first part's schema)."""
    import pandas as pd

    from fedsim.results import DEVICE_COLUMNS, part_name, read_table

    folder = tmp_path / "devices.parquet"
    folder.mkdir()
    old = {
        "round": [1],
        "device_id": [0],
        "host": [0],
        "samples": [5],
        "train_loss": [1.0],
        "train_s": [0.1],
        "checkpoint_bytes": [10],
        "status": ["ok"],
        "reason": [""],
        "test_accuracy": [float("nan")],
    }
    pd.DataFrame(old).to_parquet(folder / part_name(1))
    new = {
        **{k: [v[0]] for k, v in old.items()},
        "round": [2],
        "role": ["signflip"],
        "sim_compute_s": [1.0],
        "sim_comm_s": [2.0],
        "sim_finish_s": [3.0],
    }
    pd.DataFrame(new).to_parquet(folder / part_name(2))
    table = read_table(folder, DEVICE_COLUMNS)
    assert table["round"].tolist() == [1, 2] and list(table.columns) == DEVICE_COLUMNS
    assert table["role"].isna().tolist() == [True, False] and table["role"].iloc[1] == "signflip"
    assert table["sim_finish_s"].iloc[1] == 3.0


def test_mlflow_logs_settings_rounds_and_files_and_a_resume_goes_on_in_the_same_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = fedsim.run(
        dataset="toy_images",
        toy_samples=20,
        devices=3,
        rounds=2,
        eval_every=2,
        mlflow=uri,
        name="mlflow_test",
        out=str(tmp_path / "r"),
        engine=fedsim.LocalEngine(),
        progress=False,
    )
    client = MlflowClient(tracking_uri=uri)
    run_id = run.meta["mlflow_run_id"]
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.run_name == "r"
    assert client.get_experiment(logged.info.experiment_id).name == "mlflow_test"
    assert logged.data.params["devices"] == "3" and logged.data.params["strategy"] == "fedavg"
    assert logged.data.tags["fedsim.folder"] == str((tmp_path / "r").resolve())
    loss = [(m.step, round(m.value, 6)) for m in client.get_metric_history(run_id, "train_loss")]
    assert sorted(loss) == [(int(r), round(v, 6)) for r, v in zip(run.rounds["round"], run.rounds["train_loss"])]
    assert [m.step for m in client.get_metric_history(run_id, "test_accuracy")] == [2]  # round 1: not evaluated
    files = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.json", "artifact.json", "model.tflite", "global.ckpt"} <= files

    extended = fedsim.resume(tmp_path / "r", rounds=4, engine=fedsim.LocalEngine(), progress=False)
    assert extended.meta["mlflow_run_id"] == run_id  # the same MLflow run goes on
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == [1, 2, 3, 4]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([logged.info.experiment_id])) == 1


def test_mlflow_problems_are_one_line_before_any_folder_exists(tmp_path, monkeypatch):
    settings = dict(
        dataset="toy_images",
        toy_samples=20,
        devices=3,
        rounds=1,
        out=str(tmp_path / "r"),
        engine=fedsim.LocalEngine(),
        progress=False,
    )
    # MLflow 3 refuses its old file store unless told otherwise: named, and nothing written
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(fedsim.ConfigError, match=r"^--mlflow file:.*: MLflow refused it: .*file") as refused:
        fedsim.run(mlflow=f"file://{tmp_path / 'mlruns'}", **settings)
    assert "\n" not in str(refused.value) and not (tmp_path / "r").exists()
    with pytest.raises(fedsim.ConfigError, match="--mlflow must be a tracking URI"):
        fedsim.Config(mlflow="")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as where mlflow is not installed
    with pytest.raises(fedsim.ConfigError, match="--mlflow needs the mlflow package"):
        fedsim.run(mlflow=f"sqlite:///{tmp_path / 'm.db'}", **settings)
    assert not (tmp_path / "r").exists()


def test_state_rows_are_stored_once_in_the_commit_that_made_them_and_older_folders_read(tmp_path):
    """KeyedRows: a commit's new rows go into one file; rows a writer already stored are named, not
    rewritten; a fresh writer (a resume) stores what it holds again; one-file-per-row folders of
    earlier versions read back."""
    from fedsim.results.state import ROWS_DIR, named_rows, read_state, write_state
    from fedsim.strategies.base import KeyedRows

    rng = np.random.default_rng(0)
    rows = {k: rng.normal(size=5).astype(np.float32) for k in range(6)}
    stored: dict = {}
    write_state(tmp_path / "round-1.npz", {"r": KeyedRows.of([0, 1, 2], [rows[k] for k in (0, 1, 2)])}, 1, stored)
    second = {"r": KeyedRows.of([1, 3, 4], [rows[k] for k in (1, 3, 4)])}
    names = write_state(tmp_path / "round-2.npz", second, 2, stored)
    assert np.load(tmp_path / ROWS_DIR / "r@2.npy").shape == (2, 5)  # 3 and 4; 1 is in round 1's file
    assert named_rows(tmp_path / "round-2.npz") == names == {"r@1.npy", "r@2.npy"}  # (what the writer keeps)
    np.testing.assert_array_equal(read_state(tmp_path / "round-2.npz")["r"], np.stack([rows[k] for k in (1, 3, 4)]))
    write_state(tmp_path / "round-3.npz", {"r": KeyedRows.of([1, 5], [rows[1], rows[5]]), "c": np.ones(2)}, 3, {})
    assert np.load(tmp_path / ROWS_DIR / "r@3.npy").shape == (2, 5)
    got = read_state(tmp_path / "round-3.npz")
    np.testing.assert_array_equal(got["r"], np.stack([rows[1], rows[5]]))
    np.testing.assert_array_equal(got["c"], np.ones(2))
    # written before batches: one 1-D file per row, named by its id
    for k in (2, 4):
        np.save(tmp_path / ROWS_DIR / f"old-{k}.npy", rows[k])
    np.savez(tmp_path / "legacy.npz", **{"old@rows": np.array([4, 2])})
    np.testing.assert_array_equal(read_state(tmp_path / "legacy.npz")["old"], np.stack([rows[4], rows[2]]))
    assert named_rows(tmp_path / "legacy.npz") == {"old-4.npy", "old-2.npy"}


def test_linking_a_name_to_the_file_it_already_names_leaves_no_temporary_file(tmp_path):
    """global.ckpt is a second name of the round's checkpoint; linking it again (a failed run settles
    the folder that way) must not leave the temporary link behind (rename between two links of one
    file does nothing)."""
    from fedsim.results.durable import atomic_link

    source = tmp_path / "round-3.ckpt"
    source.write_bytes(b"model")
    atomic_link(source, tmp_path / "global.ckpt")
    atomic_link(source, tmp_path / "global.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global.ckpt", "round-3.ckpt"]
    assert (tmp_path / "global.ckpt").read_bytes() == b"model"


def test_a_rounds_row_and_a_devices_row_fill_exactly_the_declared_columns():
    """rows.py fills the columns results/schema.py declares (name, type, meaning), nothing else: the
    run's own additions (the clock's, a stage's) are declared by the part that fills them."""
    from fedsim.engine.base import DeviceReport, Evaluation
    from fedsim.loop.rows import RoundTimes, device_row, round_row
    from fedsim.results.schema import DEVICES, ROUNDS

    device = device_row(1, DeviceReport(0, 0, 5), None, None)
    assert set(device) | {"test_accuracy", "aggregated"} == {c.name for c in DEVICES}
    row = round_row(1, [device | {"test_accuracy": 0.5}], Evaluation(0.5, 1.0), 1, RoundTimes(0, 1, 2, 3), 10, {})
    clock = {"sim_round_s", "sim_elapsed_s", "elapsed_s"}  # the loop's own columns
    assert set(row) | clock == {c.name for c in ROUNDS}
    assert {c.kind for c in ROUNDS + DEVICES} <= {"int", "float", "str"} and all(c.doc for c in ROUNDS + DEVICES)
