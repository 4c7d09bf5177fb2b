"""The on-device training module: a tf.Module with exactly the guide's four signatures."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from fedsim.core.instructions import ANCHOR, CONTROL, MASK, PROXIMAL
from fedsim.core.task import Task
from fedsim.model.signatures import (
    ANCHOR_PATH,
    CHECKPOINT_FORMATS,
    CHECKPOINT_PATH,
    CONTROL_PATH,
    CORRECTION,
    LOSS,
    MASK_INPUT,
    MU,
    OUTPUT,
    PACKED,
    capabilities,
)


def outputs_probabilities(model: Any) -> bool:
    """Whether the model ends in a softmax (probabilities) rather than raw logits."""
    import keras

    last = model.layers[-1] if getattr(model, "layers", None) else None
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return activation is keras.activations.softmax or getattr(activation, "__name__", "") == "softmax"


class OnDeviceModule(tf.Module):
    """train/infer/save/restore around a Keras model, for one task and one on-device optimiser.

    Two fixes over the guide's text: `train` calls the loss as loss(y_true, y_pred) (the guide swaps
    them), and `restore` assigns each restored tensor to its variable (the guide only returns them,
    which restores nothing).

    Changes, each for the simulated fleet:
    - `x` takes the task's compact dtype: uint8 pixels (what a phone's image decoder gives) scaled to
      [0, 1] in the graph, float32 features, or int32 token ids. A quarter of the bytes of float32
      pixels cross into the interpreter, and TFLite's cast costs less than a numpy conversion.
    - `y` takes int32 class ids (the guide: one-hot float32), so a host need not one-hot every batch.
    - `infer` always returns probabilities, whether the model ends in a softmax or in logits.
    - `restore` also zeroes the optimiser's state (momentum, moments, step count): a device's round
      starts from the global weights and a fresh optimiser, whichever device used the interpreter
      before. `save` writes the model's weights only.
    - `checkpoint_format="packed"` (fedsim's default) writes every weight into one float32 tensor:
      `restore` then runs one Restore op instead of one per weight (each op opens and indexes the
      file again), and slices it with builtin ops. "tensors" keeps the guide's one tensor per weight.
    - `variant`: the capabilities it honours beyond the guide, "+"-joined (fedsim.model.signatures):
      "proximal": `train(x, y, mu)` minimises loss + mu/2 * ||w - anchor||^2 over the trainable weights,
      where `restore` sets the anchor to the restored weights (the round's global model); the returned
      loss is the task's loss alone. "anchor": `restore(checkpoint_path, anchor_path)` sets the anchor
      from its own checkpoint instead (Ditto: a personal model pulled toward the global one).
      "control": `restore(checkpoint_path, control_path)` also reads SCAFFOLD's correction c - c_i from
      the control file, and `train` adds it to every gradient before the optimiser's step. "mask":
      `train(..., mask)` multiplies each weight's gradient by its factor (in name order; 0 freezes it).
      Anchors, corrections and masks never enter the checkpoint.
    """

    def __init__(
        self, model: Any, task: Task, optimizer: Any, checkpoint_format: str = "packed", variant: str | None = None
    ) -> None:
        super().__init__()
        import keras

        from fedsim.model.builders import ModelError

        if checkpoint_format not in CHECKPOINT_FORMATS:
            raise ModelError(
                f"--checkpoint-format must be one of {', '.join(CHECKPOINT_FORMATS)}, got {checkpoint_format!r}"
            )
        try:
            caps = capabilities(variant)
        except ValueError as e:
            raise ModelError(str(e)) from None
        self.checkpoint_format = checkpoint_format
        self.variant = variant
        self.model = model
        self.task = task
        self.probabilities = outputs_probabilities(model)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=not self.probabilities)
        self.optimizer = optimizer
        self.optimizer.build(model.trainable_variables)
        # Keras 3 trap: a tf.Module does not track a Keras 3 model's variables, so without these
        # explicit references the converted model loses their initial values and `train` fails
        # with "read_variable.cc ... variable != nullptr". Keep the underlying tf.Variables here.
        self.weight_vars = [w.value for w in model.weights]
        self.optimizer_vars = [v.value for v in self.optimizer.variables]
        # The optimiser's state, reset by `restore`; its learning rate is a variable too, and stays.
        lr_var = getattr(self.optimizer, "_learning_rate", None)
        lr_var = getattr(lr_var, "value", lr_var)
        self.state_vars = [v for v in self.optimizer_vars if v is not lr_var]
        # Checkpoint tensor names: the Keras weight paths ("mlp/hidden/kernel"), unique per model.
        self.weight_names = [w.path for w in model.weights]
        if len(set(self.weight_names)) != len(self.weight_names):
            raise ValueError(f"model weight names are not unique: {self.weight_names}")
        if checkpoint_format == "packed":
            odd = [(w.path, w.dtype) for w in model.weights if w.dtype != "float32"]
            if odd:
                raise ModelError(
                    f"--checkpoint-format packed needs float32 weights, but {odd[0][0]} is "
                    f"{odd[0][1]}; use --checkpoint-format tensors"
                )
        # A packed checkpoint holds the weights in name order: the order in which the restore
        # signature lists its outputs, so the artifact itself tells how to cut it (Runner.layout).
        self.packed = sorted(zip(self.weight_names, self.weight_vars), key=lambda nv: nv[0])
        # FedProx's anchors: one per trainable weight, by weight name (set by restore, never saved)
        trainable = {v.path for v in model.trainable_variables}
        self.anchors = (
            {
                w.path: tf.Variable(tf.zeros_like(w.value), trainable=False, name=f"anchor_{i}")
                for i, w in enumerate(model.weights)
                if w.path in trainable
            }
            if PROXIMAL in caps
            else {}
        )
        # SCAFFOLD's correction c - c_i, one per weight in packed (name) order (set by restore, never saved)
        self.corrections = (
            [
                tf.Variable(tf.zeros_like(var), trainable=False, name=f"correction_{i}")
                for i, (_, var) in enumerate(self.packed)
            ]
            if CONTROL in caps
            else []
        )
        self.correction_of = {name: i for i, (name, _) in enumerate(self.packed)}
        self.masked = MASK in caps
        self.anchored = ANCHOR in caps
        x_spec = tf.TensorSpec([None, *task.input_shape], tf.as_dtype(task.input_dtype), name="x")
        y_spec = tf.TensorSpec([None], tf.int32, name="y")
        path_spec = tf.TensorSpec([], tf.string, name=CHECKPOINT_PATH)
        # Signatures follow the task and the capabilities, so they are bound here rather than in the
        # class body; their extra inputs come after the guide's, in this order.
        restore_specs = [path_spec]
        if self.anchored:
            restore_specs.append(tf.TensorSpec([], tf.string, name=ANCHOR_PATH))
        if self.corrections:
            restore_specs.append(tf.TensorSpec([], tf.string, name=CONTROL_PATH))
        train_specs = [x_spec, y_spec]
        if self.anchors:
            train_specs.append(tf.TensorSpec([], tf.float32, name=MU))
        if self.masked:
            train_specs.append(tf.TensorSpec([len(self.packed)], tf.float32, name=MASK_INPUT))
        self.restore = tf.function(self._restore_any, input_signature=restore_specs)
        self.train = tf.function(self._train_any, input_signature=train_specs)
        self.infer = tf.function(self._infer, input_signature=[x_spec])

    def _train_any(self, x: tf.Tensor, y: tf.Tensor, *extra: tf.Tensor) -> dict[str, tf.Tensor]:
        rest = list(extra)
        mu = rest.pop(0) if self.anchors else None
        mask = rest.pop(0) if self.masked else None
        if mu is not None:
            return self._train_prox(x, y, mu, mask)
        return self._train(x, y, mask)

    def _restore_any(self, checkpoint_path: tf.Tensor, *extra: tf.Tensor) -> dict[str, tf.Tensor]:
        rest = list(extra)
        anchor_path = rest.pop(0) if self.anchored else None
        if self.corrections:
            self._read_control(rest.pop(0))
        restored = self._restore(checkpoint_path)
        if anchor_path is not None:
            self._read_anchors(anchor_path)
        return restored

    def preprocess(self, x: tf.Tensor) -> tf.Tensor:
        """What the model sees: uint8 pixels as float32 in [0, 1]; features and tokens as they are."""
        if self.task.kind == "image":
            return tf.cast(x, tf.float32) * (1.0 / 255.0)
        return x

    def _train(self, x: tf.Tensor, y: tf.Tensor, mask: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        with tf.GradientTape() as tape:
            prediction = self.model(self.preprocess(x), training=True)
            loss = self.loss_fn(y, prediction)
        gradients = tape.gradient(loss, self.model.trainable_variables)
        if self.corrections:  # SCAFFOLD: g + (c - c_i)
            gradients = [
                g + self.corrections[self.correction_of[v.path]]
                for g, v in zip(gradients, self.model.trainable_variables)
            ]
        self.optimizer.apply_gradients(zip(self._masked(gradients, mask), self.model.trainable_variables))
        return {LOSS: loss}

    def _train_prox(
        self, x: tf.Tensor, y: tf.Tensor, mu: tf.Tensor, mask: tf.Tensor | None = None
    ) -> dict[str, tf.Tensor]:
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            prediction = self.model(self.preprocess(x), training=True)
            loss = self.loss_fn(y, prediction)
            proximal = tf.add_n([tf.reduce_sum(tf.square(v - self.anchors[v.path])) for v in variables])
            total = loss + 0.5 * mu * proximal
        gradients = tape.gradient(total, variables)
        if self.corrections:  # SCAFFOLD: g + (c - c_i)
            gradients = [g + self.corrections[self.correction_of[v.path]] for g, v in zip(gradients, variables)]
        self.optimizer.apply_gradients(zip(self._masked(gradients, mask), variables))
        return {LOSS: loss}

    def _masked(self, gradients: list[tf.Tensor], mask: tf.Tensor | None) -> list[tf.Tensor]:
        """Each trainable weight's gradient times its factor (the mask variant; unchanged without one)."""
        if mask is None:
            return gradients
        return [g * mask[self.correction_of[v.path]] for g, v in zip(gradients, self.model.trainable_variables)]

    def _infer(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        out = self.model(self.preprocess(x))
        return {OUTPUT: out if self.probabilities else tf.nn.softmax(out)}

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name=CHECKPOINT_PATH)])
    def save(self, checkpoint_path: tf.Tensor) -> dict[str, tf.Tensor]:
        if self.checkpoint_format == "packed":
            names = [PACKED]
            values = [tf.concat([tf.reshape(v.read_value(), [-1]) for _, v in self.packed], 0)]
        else:
            names, values = self.weight_names, [v.read_value() for v in self.weight_vars]
        tf.raw_ops.Save(filename=checkpoint_path, tensor_names=names, data=values, name="save")
        return {CHECKPOINT_PATH: checkpoint_path}

    def _read_control(self, control_path: tf.Tensor) -> None:
        flat = tf.raw_ops.Restore(
            file_pattern=control_path, tensor_name=CORRECTION, dt=tf.float32, name="restore_control"
        )
        sizes = [int(np.prod(var.shape)) for _, var in self.packed]
        for (_, var), part, correction in zip(self.packed, tf.split(flat, sizes), self.corrections):
            correction.assign(tf.reshape(part, var.shape))

    def _read_anchors(self, anchor_path: tf.Tensor) -> None:
        """The anchors from a checkpoint of the model's layout (packed, or one tensor per weight)."""
        if self.checkpoint_format == "packed":
            flat = tf.raw_ops.Restore(file_pattern=anchor_path, tensor_name=PACKED, dt=tf.float32, name="anchor")
            sizes = [int(np.prod(var.shape)) for _, var in self.packed]
            for (name, var), part in zip(self.packed, tf.split(flat, sizes)):
                if name in self.anchors:
                    self.anchors[name].assign(tf.reshape(part, var.shape))
            return
        for name, var in zip(self.weight_names, self.weight_vars):
            if name in self.anchors:
                value = tf.raw_ops.Restore(file_pattern=anchor_path, tensor_name=name, dt=var.dtype, name="anchor")
                self.anchors[name].assign(value)

    def _restore(self, checkpoint_path: tf.Tensor) -> dict[str, tf.Tensor]:
        restored = {}
        if self.checkpoint_format == "packed":
            flat = tf.raw_ops.Restore(file_pattern=checkpoint_path, tensor_name=PACKED, dt=tf.float32, name="restore")
            sizes = [int(np.prod(var.shape)) for _, var in self.packed]
            for (name, var), part in zip(self.packed, tf.split(flat, sizes)):
                restored[name] = tf.reshape(part, var.shape)
                var.assign(restored[name])
                if name in self.anchors:
                    self.anchors[name].assign(restored[name])
        else:
            for name, var in zip(self.weight_names, self.weight_vars):
                restored[name] = tf.raw_ops.Restore(
                    file_pattern=checkpoint_path, tensor_name=name, dt=var.dtype, name="restore"
                )
                var.assign(restored[name])
                if name in self.anchors:
                    self.anchors[name].assign(restored[name])
        for var in self.state_vars:
            var.assign(tf.zeros_like(var))
        return restored
