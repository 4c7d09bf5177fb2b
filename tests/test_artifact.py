"""Artifacts made elsewhere: each failed check is one line; and the `fedsim inspect` report."""

import json

import pytest
from guide_artifact import build_guide_tflite

from fedsim.artifact import ArtifactError, check_artifact, inspect
from fedsim.task import Task

TOY_TASK = Task((28, 28), "image", 10)


def check(artifact, toy, task=TOY_TASK):
    check_artifact(artifact, task, toy.x_train[:32], toy.y_train[:32])


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_a_guide_made_artifact_passes_every_check(toy):
    check(build_guide_tflite(), toy)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(signatures=("train", "infer", "save")), "missing signature(s) restore"),
        (dict(restore_assigns=False), "restore does not bring back"),
        (dict(lr=0.0), "one train step changes no weight"),
        (dict(nan_loss=True), "non-finite loss"),
        (dict(input_shape=(32, 32)), "x takes samples of shape (32, 32), but the data's are (28, 28)"),
        (dict(classes=5), "one-hot rows of 5 classes, but the data has 10"),
    ],
)
def test_each_broken_artifact_is_refused_with_one_line(options, message, toy):
    with pytest.raises(ArtifactError) as e:
        check(build_guide_tflite(**options), toy)
    assert message in one_line(e)


def test_bytes_that_are_no_tflite_are_refused(toy):
    with pytest.raises(ArtifactError) as e:
        check(b"not a flatbuffer at all", toy)
    assert "the interpreter cannot load it" in one_line(e)


def test_the_inspect_report_of_the_seed_artifact(artifact, toy):
    report = inspect(artifact, batch=(toy.x_train, toy.y_train), repeats=3)
    # The seed MLP: 784*128 + 128 + 128*10 + 10 float32 weights.
    assert report.parameters == 101_770 and report.checkpoint_bytes > 4 * 101_770
    assert report.task == TOY_TASK.to_dict()
    train_inputs = {d["name"]: d for d in report.signatures["train"]["inputs"]}
    assert train_inputs["x"] == {"name": "x", "shape": [-1, 28, 28], "dtype": "uint8"}
    assert train_inputs["y"] == {"name": "y", "shape": [-1], "dtype": "int32"}
    assert report.flex_ops("save") == ["FlexSave"] and report.flex_ops("restore") == ["FlexRestore"]
    assert report.flex_ops("infer") == []  # inference needs no Select TF op
    assert set(report.latency_ms) == {"train", "infer", "save", "restore"}
    assert all(v > 0 for v in report.latency_ms.values())
    table = report.table()
    assert list(table["signature"]) == ["train", "infer", "save", "restore"]
    assert "Select TF ops" in str(report) and "FlexRestore" in str(report)
    json.dumps(report.to_dict())  # artifact.json is plain JSON


def test_parity_the_artifact_learns_what_the_tensorflow_model_learns(artifact, toy):
    from fedsim.model.builders import ArtifactRecipe

    report = inspect(artifact, batch=(toy.x_train, toy.y_train), repeats=1, parity=4, recipe=ArtifactRecipe())
    p = report.parity
    assert list(p["step"]) == [1, 2, 3, 4]
    assert (p["loss_diff"] < 1e-4).all() and (p["max_weight_diff"] < 1e-5).all()
    assert p["loss_tflite"].iloc[-1] < p["loss_tflite"].iloc[0]  # it really trained
