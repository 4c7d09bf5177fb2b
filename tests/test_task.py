"""The task contract: shape, kind and classes come from the data, and the artifact follows them."""

import numpy as np
import pytest

from fedsim.core.task import Task, TaskError
from fedsim.data import ArrayDataset
from fedsim.device import Runner
from fedsim.model.builders import ArtifactRecipe, build_cnn, build_logreg, build_mlp
from fedsim.model.convert import convert_to_tflite


def arrays(x, classes=3, n_test=4):
    y = np.arange(len(x)) % classes
    return ArrayDataset(x, y, x[:n_test], y[:n_test])


def test_the_task_is_taken_from_the_data():
    gray = arrays(np.zeros((6, 28, 28), np.uint8))
    assert gray.task == Task((28, 28), "image", 3) and gray.task.input_dtype == "uint8"
    colour = arrays(np.zeros((6, 16, 16, 3), np.uint8), classes=5)
    assert colour.task == Task((16, 16, 3), "image", 5)
    features = arrays(np.ones((6, 60), np.float64))
    assert features.task == Task((60,), "features", 3) and features.x_train.dtype == np.float32
    tokens = arrays(np.array([[1, 2, 41]] * 6, np.int64), classes=2)
    assert tokens.task == Task((3,), "tokens", 2, vocab_size=42) and tokens.x_train.dtype == np.int32
    assert tokens.task.describe() == "length-3 token sequences (vocabulary 42), 2 classes"


def test_num_classes_given_beats_the_labels_and_the_task_round_trips_through_a_dict():
    ds = ArrayDataset(np.zeros((4, 5), np.float32), [0, 1, 1, 0], np.zeros((2, 5), np.float32), [1, 0], num_classes=7)
    assert ds.task.num_classes == 7 and ds.y_train.dtype == np.int32
    assert Task.from_dict(ds.task.to_dict()) == ds.task
    assert ds.task.to_dict()["input_dtype"] == "float32"


def test_a_task_needs_two_classes_and_images_need_two_or_three_dimensions():
    with pytest.raises(TaskError, match="at least 2 classes"):
        Task((4,), "features", 1)
    with pytest.raises(TaskError, match="H x W or H x W x C"):
        Task((4,), "image", 10)


@pytest.mark.parametrize(
    "task, builder, x_dtype, x_shape",
    [
        (Task((60,), "features", 3), build_logreg, np.float32, [-1, 60]),
        (Task((16, 16, 3), "image", 4), build_cnn, np.uint8, [-1, 16, 16, 3]),
        (Task((12,), "tokens", 4, vocab_size=50), build_mlp, np.int32, [-1, 12]),
    ],
)
def test_the_artifacts_signatures_follow_the_task(task, builder, x_dtype, x_shape):
    runner = Runner(convert_to_tflite(ArtifactRecipe(builder, task)))
    for sig in (runner._train, runner._infer):
        x = sig.get_input_details()["x"]
        assert x["dtype"] == x_dtype and list(x["shape_signature"]) == x_shape
    y = runner._train.get_input_details()["y"]
    assert y["dtype"] == np.int32 and list(y["shape_signature"]) == [-1]  # class ids, not one-hot
    out = runner._infer.get_output_details()["output"]
    assert list(out["shape_signature"]) == [-1, task.num_classes]
    from fedsim.model.convert import sample_inputs

    probs = runner.infer(sample_inputs(task, 5))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
