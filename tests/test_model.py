import numpy as np

from fedsim.device import Runner
from fedsim.model import SIGNATURES
from fedsim.model.signatures import INFER, RESTORE, SAVE, TRAIN

from conftest import batch


def test_artifact_has_the_four_signatures_of_the_guide(runner):
    sigs = runner.interpreter.get_signature_list()
    assert set(sigs) == set(SIGNATURES)
    assert sigs[TRAIN] == {"inputs": ["x", "y"], "outputs": ["loss"]}
    assert sigs[INFER] == {"inputs": ["x"], "outputs": ["output"]}
    assert sigs[SAVE] == {"inputs": ["checkpoint_path"], "outputs": ["checkpoint_path"]}
    assert sigs[RESTORE]["inputs"] == ["checkpoint_path"]
    assert len(sigs[RESTORE]["outputs"]) == 4  # two Dense layers: kernel + bias each


def test_save_then_restore_in_a_fresh_interpreter_gives_identical_weights(artifact, runner, synthetic, scratch):
    x, y = batch(synthetic)
    for _ in range(5):
        runner.train(x, y)  # move away from the initial weights baked into the artifact
    path = scratch / "trained.ckpt"
    runner.save(path)
    trained_out = runner.infer(x)

    fresh = Runner(artifact)
    before = fresh.infer(x)
    restored = fresh.restore(path)
    after = fresh.infer(x)

    from fedsim.checkpoint import read_checkpoint_file

    on_disk = read_checkpoint_file(path)
    assert set(restored) == set(on_disk)
    for name, value in on_disk.items():
        np.testing.assert_array_equal(restored[name], value)
    assert not np.allclose(before, trained_out)  # the fresh interpreter started elsewhere...
    np.testing.assert_array_equal(after, trained_out)  # ...and restore really assigned the weights


def test_train_lowers_the_loss(runner, synthetic):
    x, y = batch(synthetic, 64)
    first = runner.train(x, y)
    for _ in range(30):
        last = runner.train(x, y)
    assert np.isfinite(first) and last < 0.7 * first


def test_infer_outputs_class_probabilities(runner, synthetic):
    x, _ = batch(synthetic, 7)
    out = runner.infer(x)
    assert out.shape == (7, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)


def test_the_artifact_takes_uint8_pixels_and_scales_them_itself(runner):
    x_details = runner._train.get_input_details()["x"]
    assert x_details["dtype"] == np.uint8 and runner.image_dtype == np.uint8
    assert runner._infer.get_input_details()["x"]["dtype"] == np.uint8


def test_an_artifact_taking_float32_images_still_runs_and_agrees(artifact, synthetic, scratch, monkeypatch):
    """A .tflite made before the artifact scaled its own pixels (a resumed run keeps its own) takes
    float32 in [0, 1]: the Runner scales for it, and the outputs equal the uint8 artifact's."""
    import tensorflow as tf

    from fedsim.model import convert
    from fedsim.model.module import OnDeviceModule
    from fedsim.model.signatures import LOSS, OUTPUT

    class FloatInputModule(OnDeviceModule):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="x"),
                                      tf.TensorSpec([None, 10], tf.float32, name="y")])
        def train(self, x, y):
            with tf.GradientTape() as tape:
                loss = self.loss_fn(y, self.model(x, training=True))
            grads = tape.gradient(loss, self.model.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
            return {LOSS: loss}

        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28], tf.float32, name="x")])
        def infer(self, x):
            return {OUTPUT: self.model(x)}

    monkeypatch.setattr(convert, "OnDeviceModule", FloatInputModule)
    old = Runner(convert.convert_to_tflite())  # same builder, lr and seed as the `artifact` fixture
    new = Runner(artifact)
    assert old.image_dtype == np.float32
    x, y = batch(synthetic, 16)
    np.testing.assert_allclose(old.infer(old.images(x)), new.infer(new.images(x)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(old.train(old.images(x), y), new.train(new.images(x), y), rtol=1e-6)


def test_initial_checkpoint_is_the_artifacts_own_weights(artifact, scratch):
    a = Runner(artifact).initial_checkpoint(scratch)
    b = Runner(artifact).initial_checkpoint(scratch)
    assert a == b and len(a) > 400_000  # the seed MLP's ~101k float32 weights


def test_a_custom_keras_builder_converts(scratch):
    import keras

    from fedsim.model.convert import convert_to_tflite

    def tiny():
        return keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")])

    r = Runner(convert_to_tflite(tiny, lr=0.1))
    r.save(scratch / "c.ckpt")
    assert len(r.restore(scratch / "c.ckpt")) == 2


def test_conversion_is_reproducible_within_a_process(artifact, scratch):
    """Same builder, lr and seed -> the same signatures, weight names and initial weights, however many
    models the process built before."""
    from fedsim.model.convert import convert_to_tflite

    again = Runner(convert_to_tflite(lr=0.05, seed=0))
    first = Runner(artifact)
    assert again.interpreter.get_signature_list() == first.interpreter.get_signature_list()
    assert again.initial_checkpoint(scratch) == first.initial_checkpoint(scratch)
    assert "mlp/hidden/kernel" in first.interpreter.get_signature_list()["restore"]["outputs"]
