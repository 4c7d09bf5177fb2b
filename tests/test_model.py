import numpy as np
import pytest
from conftest import batch

from fedsim.device import Runner
from fedsim.model import SIGNATURES
from fedsim.model.signatures import INFER, RESTORE, SAVE, TRAIN


def test_artifact_has_the_four_signatures_of_the_guide(runner):
    sigs = runner.interpreter.get_signature_list()
    assert set(sigs) == set(SIGNATURES)
    assert sigs[TRAIN] == {"inputs": ["x", "y"], "outputs": ["loss"]}
    assert sigs[INFER] == {"inputs": ["x"], "outputs": ["output"]}
    assert sigs[SAVE] == {"inputs": ["checkpoint_path"], "outputs": ["checkpoint_path"]}
    assert sigs[RESTORE]["inputs"] == ["checkpoint_path"]
    assert len(sigs[RESTORE]["outputs"]) == 4  # two Dense layers: kernel + bias each


def test_save_then_restore_in_a_fresh_interpreter_gives_identical_weights(artifact, runner, toy, scratch):
    x, y = batch(toy)
    for _ in range(5):
        runner.train(x, y)  # move away from the initial weights baked into the artifact
    path = scratch / "trained.ckpt"
    runner.save(path)
    trained_out = runner.infer(x)

    fresh = Runner(artifact)
    before = fresh.infer(x)
    restored = fresh.restore(path)
    after = fresh.infer(x)

    from fedsim.checkpoint import read_checkpoint_file, unpack

    on_disk = unpack(read_checkpoint_file(path), fresh.layout)
    assert set(restored) == set(on_disk)
    for name, value in on_disk.items():
        np.testing.assert_array_equal(restored[name], value)
    assert not np.allclose(before, trained_out)  # the fresh interpreter started elsewhere...
    np.testing.assert_array_equal(after, trained_out)  # ...and restore really assigned the weights


def test_train_lowers_the_loss(runner, toy):
    x, y = batch(toy, 64)
    first = runner.train(x, y)
    for _ in range(30):
        last = runner.train(x, y)
    assert np.isfinite(first) and last < 0.7 * first


def test_infer_outputs_class_probabilities(runner, toy):
    x, _ = batch(toy, 7)
    out = runner.infer(x)
    assert out.shape == (7, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_the_artifact_takes_uint8_pixels_and_class_ids(runner):
    x_details = runner._train.get_input_details()["x"]
    assert x_details["dtype"] == np.uint8 and runner.x_dtype == np.uint8
    assert runner._infer.get_input_details()["x"]["dtype"] == np.uint8
    y_details = runner._train.get_input_details()["y"]
    assert y_details["dtype"] == np.int32 and list(y_details["shape_signature"]) == [-1]
    assert runner.one_hot_classes is None


def test_a_guide_made_artifact_takes_float_pixels_and_one_hot_labels_and_still_runs(toy):
    """The guide's artifact (and fedsim's before the task contract) takes float32 pixels and one-hot
    labels: the Runner converts the data for it."""
    from guide_artifact import build_guide_tflite

    guide = Runner(build_guide_tflite())
    assert guide.x_dtype == np.float32 and guide.one_hot_classes == 10
    x, y = batch(toy, 64)
    xs, ys = guide.inputs(x), guide.labels(y)
    np.testing.assert_allclose(xs, x / 255.0, rtol=1e-6)
    assert ys.shape == (64, 10) and (ys.argmax(axis=1) == y).all()
    first = guide.train(xs, ys)
    for _ in range(30):
        last = guide.train(xs, ys)
    assert last < 0.7 * first
    np.testing.assert_allclose(guide.infer(xs).sum(axis=1), 1.0, rtol=1e-5)


def test_initial_checkpoint_is_the_artifacts_own_weights(artifact, scratch):
    a = Runner(artifact).initial_checkpoint(scratch)
    b = Runner(artifact).initial_checkpoint(scratch)
    assert a == b and len(a) > 400_000  # the seed MLP's ~101k float32 weights


def test_a_custom_keras_builder_converts(scratch):
    import keras

    from fedsim.model.builders import ArtifactRecipe, Optimizer
    from fedsim.model.convert import convert_to_tflite

    def tiny():  # a builder written before builders received the task still works
        return keras.Sequential(
            [keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
        )

    r = Runner(convert_to_tflite(ArtifactRecipe(tiny, optimizer=Optimizer(lr=0.1))))
    r.save(scratch / "c.ckpt")
    assert len(r.restore(scratch / "c.ckpt")) == 2


def test_conversion_is_reproducible_within_a_process(artifact, scratch):
    """Same builder, lr and seed -> the same signatures, weight names and initial weights, however many
    models the process built before."""
    from fedsim.model.convert import convert_to_tflite

    again = Runner(convert_to_tflite())
    first = Runner(artifact)
    assert again.interpreter.get_signature_list() == first.interpreter.get_signature_list()
    assert again.initial_checkpoint(scratch) == first.initial_checkpoint(scratch)
    assert "mlp/hidden/kernel" in first.interpreter.get_signature_list()["restore"]["outputs"]


def _trained(runner, checkpoint, batches, scratch, name):
    runner.restore(checkpoint)
    for x, y in batches:
        runner.train(x, y)
    runner.save(scratch / name)
    from fedsim.checkpoint import read_checkpoint_file, unpack

    return unpack(read_checkpoint_file(scratch / name), runner.layout)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_optimizer_state_never_leaks_from_one_device_to_the_next(optimizer, toy, scratch):
    """Device A trains, then device B restores the global model on the same interpreter: B's result
    equals B alone on a fresh interpreter, so A's momentum / moments did not carry over."""
    from fedsim.model.builders import ArtifactRecipe, Optimizer
    from fedsim.model.convert import convert_to_tflite

    artifact = convert_to_tflite(ArtifactRecipe(optimizer=Optimizer(optimizer, lr=0.05)))
    shared = Runner(artifact)
    shared.save(scratch / "global.ckpt")
    a = [batch(toy, 32, 0), batch(toy, 32, 32), batch(toy, 32, 64)]
    b = [batch(toy, 32, 100), batch(toy, 32, 132)]
    _trained(shared, scratch / "global.ckpt", a, scratch, "a.ckpt")
    after_a = _trained(shared, scratch / "global.ckpt", b, scratch, "b.ckpt")
    alone = _trained(Runner(artifact), scratch / "global.ckpt", b, scratch, "alone.ckpt")
    assert after_a.keys() == alone.keys()
    for name in alone:
        np.testing.assert_array_equal(after_a[name], alone[name])
    # The uploaded checkpoint holds the model's four weights only, never the optimiser's state.
    assert sorted(alone) == ["mlp/classifier/bias", "mlp/classifier/kernel", "mlp/hidden/bias", "mlp/hidden/kernel"]
    from fedsim.checkpoint import read_checkpoint_file

    assert read_checkpoint_file(scratch / "alone.ckpt")["fedsim/packed"].size == 784 * 128 + 128 + 128 * 10 + 10


def test_momentum_really_keeps_state_within_a_round(toy, scratch):
    """The reset is not vacuous: the same two batches give other weights with momentum than with SGD."""
    from fedsim.model.builders import ArtifactRecipe, Optimizer
    from fedsim.model.convert import convert_to_tflite

    runs = {}
    for name in ("sgd", "momentum"):
        r = Runner(convert_to_tflite(ArtifactRecipe(optimizer=Optimizer(name, lr=0.05))))
        r.save(scratch / f"g-{name}.ckpt")
        runs[name] = _trained(
            r, scratch / f"g-{name}.ckpt", [batch(toy, 32, 0), batch(toy, 32, 32)], scratch, f"{name}.ckpt"
        )
    assert not np.array_equal(runs["sgd"]["mlp/hidden/kernel"], runs["momentum"]["mlp/hidden/kernel"])


def _builder_error(builder, task=None):
    from fedsim.model.builders import ArtifactRecipe, ModelError
    from fedsim.model.convert import convert_to_tflite

    recipe = ArtifactRecipe(builder) if task is None else ArtifactRecipe(builder, task)
    with pytest.raises(ModelError) as e:
        convert_to_tflite(recipe)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_layer_that_cannot_be_trained_is_named_in_one_line():
    import keras

    def frozen_path(task):
        inputs = keras.Input(task.input_shape)
        hidden = keras.layers.Dense(8, name="hidden")(keras.layers.Flatten()(inputs))
        cut = keras.layers.Lambda(lambda t: keras.ops.stop_gradient(t), name="cut")(hidden)
        return keras.Model(inputs, keras.layers.Dense(task.num_classes, name="out")(cut))

    message = _builder_error(frozen_path)
    assert "layer 'hidden' cannot be trained on device" in message and "no gradient" in message


def test_a_model_that_does_not_fit_the_task_gets_one_line():
    import keras

    def wrong_input(task):
        return keras.Sequential([keras.Input((32, 32)), keras.layers.Flatten(), keras.layers.Dense(10)])

    def wrong_classes(task):
        return keras.Sequential([keras.Input(task.input_shape), keras.layers.Flatten(), keras.layers.Dense(5)])

    assert "takes inputs of shape (32, 32) but the data's samples are (28, 28)" in _builder_error(wrong_input)
    assert "outputs (5,) per sample; the data has 10 classes" in _builder_error(wrong_classes)
    from fedsim.core.task import Task
    from fedsim.model.builders import build_cnn

    assert "--model cnn needs image inputs" in _builder_error(build_cnn, Task((60,), "features", 10))


def test_a_user_builder_by_import_path_and_a_logits_model(toy):
    from fedsim.model.builders import ArtifactRecipe, ModelError, builder_name, resolve_builder
    from fedsim.model.convert import convert_to_tflite

    build = resolve_builder("user_models:build")
    assert builder_name(build) == "user_models:build" and builder_name(resolve_builder("cnn")) == "cnn"
    runner = Runner(convert_to_tflite(ArtifactRecipe(build)))
    probs = runner.infer(toy.x_test[:5])  # the model ends in logits; infer still gives probabilities
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert (probs >= 0).all()
    for bad, message in (
        ("no_such_module:build", "cannot import no_such_module"),
        ("user_models:missing", "user_models has no missing"),
        ("mlp2", "use one of"),
    ):
        with pytest.raises(ModelError, match=message):
            resolve_builder(bad)


def test_packed_and_per_tensor_checkpoints_train_the_same_and_tensorflow_reads_both(toy, scratch):
    """The packed form (fedsim's default) is one tensor in a TF v1 file that tf.train.load_checkpoint
    reads; cut along the layout it holds exactly what the guide's one-tensor-per-weight form holds
    after the same training, and each form's restore brings its own file back."""
    import tensorflow as tf

    from fedsim.checkpoint import read_checkpoint_file, unpack
    from fedsim.model.builders import ArtifactRecipe
    from fedsim.model.convert import convert_to_tflite

    trained = {}
    for form in ("packed", "tensors"):
        r = Runner(convert_to_tflite(ArtifactRecipe(checkpoint_format=form)))
        for start in (0, 32, 64):
            r.train(*batch(toy, 32, start))
        path = scratch / f"{form}.ckpt"
        r.save(path)
        names = tf.train.load_checkpoint(str(path)).get_variable_to_shape_map()
        assert names == ({"fedsim/packed": [101770]} if form == "packed" else {n: list(s) for n, s in r.layout})
        trained[form] = unpack(read_checkpoint_file(path), r.layout)
        fresh = Runner(convert_to_tflite(ArtifactRecipe(checkpoint_format=form)))
        restored = fresh.restore(path)
        for name, value in trained[form].items():
            np.testing.assert_array_equal(restored[name], value)
    assert trained["packed"].keys() == trained["tensors"].keys()
    for name, value in trained["tensors"].items():
        np.testing.assert_array_equal(trained["packed"][name], value)


def test_packed_needs_float32_weights():
    import keras

    from fedsim.model.builders import ArtifactRecipe, ModelError
    from fedsim.model.convert import convert_to_tflite

    def half():
        return keras.Sequential(
            [
                keras.Input((28, 28)),
                keras.layers.Flatten(),
                keras.layers.Dense(10, activation="softmax", dtype="float64", name="out"),
            ]
        )

    with pytest.raises(
        ModelError, match="--checkpoint-format packed needs float32 weights.*use --checkpoint-format tensors"
    ):
        convert_to_tflite(ArtifactRecipe(half))
