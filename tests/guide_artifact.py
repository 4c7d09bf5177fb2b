"""A .tflite made outside fedsim, the way TensorFlow's on-device training guide makes one: float32
pixels in [0, 1], one-hot float32 labels, a tf.Module with train/infer/save/restore. Options break it
in the ways the artifact checks must catch."""

from __future__ import annotations

import tempfile
from pathlib import Path


def build_guide_tflite(
    *,
    input_shape: tuple[int, ...] = (28, 28),
    classes: int = 10,
    lr: float = 0.05,
    restore_assigns: bool = True,
    signatures: tuple[str, ...] = ("train", "infer", "save", "restore"),
    nan_loss: bool = False,
) -> bytes:
    import keras
    import tensorflow as tf

    keras.backend.clear_session()
    keras.utils.set_random_seed(7)
    x_spec = tf.TensorSpec([None, *input_shape], tf.float32, name="x")
    y_spec = tf.TensorSpec([None, classes], tf.float32, name="y")

    class GuideModel(tf.Module):
        def __init__(self) -> None:
            self.model = keras.Sequential(
                [
                    keras.Input(input_shape),
                    keras.layers.Flatten(name="flatten"),
                    keras.layers.Dense(32, activation="relu", name="dense"),
                    keras.layers.Dense(classes, activation="softmax", name="out"),
                ],
                name="guide",
            )
            self.loss_fn = keras.losses.CategoricalCrossentropy()
            self.opt = keras.optimizers.SGD(learning_rate=lr)
            self.opt.build(self.model.trainable_variables)
            # Keras 3: keep the tf.Variables on the module, or conversion loses their values.
            self.vars = [w.value for w in self.model.weights]
            self.opt_vars = [v.value for v in self.opt.variables]
            self.names = [w.path for w in self.model.weights]

        @tf.function(input_signature=[x_spec, y_spec])
        def train(self, x, y):
            with tf.GradientTape() as tape:
                loss = self.loss_fn(y, self.model(x, training=True))
                if nan_loss:
                    loss = loss * float("nan")
            grads = tape.gradient(loss, self.model.trainable_variables)
            self.opt.apply_gradients(zip(grads, self.model.trainable_variables))
            return {"loss": loss}

        @tf.function(input_signature=[x_spec])
        def infer(self, x):
            return {"output": self.model(x)}

        @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="checkpoint_path")])
        def save(self, checkpoint_path):
            tf.raw_ops.Save(filename=checkpoint_path, tensor_names=self.names, data=[v.read_value() for v in self.vars])
            return {"checkpoint_path": checkpoint_path}

        @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="checkpoint_path")])
        def restore(self, checkpoint_path):
            out = {}
            for name, var in zip(self.names, self.vars):
                t = tf.raw_ops.Restore(file_pattern=checkpoint_path, tensor_name=name, dt=tf.float32)
                if restore_assigns:  # the guide's text forgets this line
                    var.assign(t)
                out[name] = t
            return out

    module = GuideModel()
    sigs = {s: getattr(module, s).get_concrete_function() for s in signatures}
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, str(Path(tmp) / "sm"), signatures=sigs)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(Path(tmp) / "sm"), signature_keys=list(sigs))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        converter.experimental_enable_resource_variables = True
        return converter.convert()
