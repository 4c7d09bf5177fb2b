"""Keras model builders. A builder receives the Task and returns an uncompiled Keras model.

The model sees what the artifact hands it after its own preprocessing: images as float32 in [0, 1]
of the task's shape (H, W) or (H, W, C), features as float32, tokens as int32 ids. Its output is
(None, num_classes): probabilities (a softmax last) or logits (anything else); the artifact's loss
and `infer` adapt to which.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedsim.core.settings import import_object
from fedsim.core.task import Task

ModelBuilder = Callable[..., Any]


class ModelError(ValueError):
    """A model cannot become an on-device artifact for this task (the message names the layer or the flag)."""


def _front(task: Task, keras: Any) -> list[Any]:
    """Input layer, and for tokens an embedding: what every built-in model starts with."""
    layers = [keras.Input(shape=task.input_shape, dtype="int32" if task.kind == "tokens" else "float32")]
    if task.kind == "tokens":
        layers += [
            keras.layers.Embedding(task.vocab_size, 32, name="embedding"),
            keras.layers.GlobalAveragePooling1D(name="pool"),
        ]
    else:
        layers.append(keras.layers.Flatten(name="flatten"))
    return layers


def build_mlp(task: Task) -> Any:
    """The guide's model: Flatten -> Dense(128, relu) -> Dense(classes, softmax)."""
    import keras

    # Explicit names: they become the checkpoint's tensor names ("mlp/hidden/kernel"), so they must
    # not depend on how many models the process built before.
    return keras.Sequential(
        _front(task, keras)
        + [
            keras.layers.Dense(128, activation="relu", name="hidden"),
            keras.layers.Dense(task.num_classes, activation="softmax", name="classifier"),
        ],
        name="mlp",
    )


def build_logreg(task: Task) -> Any:
    """Multinomial logistic regression: Flatten -> Dense(classes, softmax), the usual model for
    Synthetic(alpha, beta)."""
    import keras

    return keras.Sequential(
        _front(task, keras) + [keras.layers.Dense(task.num_classes, activation="softmax", name="classifier")],
        name="logreg",
    )


def cnn_input(task: Task) -> tuple[int, int, int]:
    """The images' height, width and channels, or ModelError saying why the cnn cannot take them."""
    if task.kind != "image":
        raise ModelError(
            f"--model cnn needs image inputs (H x W or H x W x C uint8); this data set has {task.describe()}"
        )
    h, w = task.input_shape[:2]
    if min(h, w) < 12:
        raise ModelError(
            f"--model cnn needs images of at least 12x12 (two 5x5 convolutions and two pools); "
            f"this data set has {h}x{w}"
        )
    channels = task.input_shape[2] if len(task.input_shape) == 3 else 1
    return h, w, channels


def build_cnn(task: Task) -> Any:
    """The small CNN of the non-IID FMNIST literature (LeNet-5 shape): conv 6@5x5 -> max-pool 2 ->
    conv 16@5x5 -> max-pool 2 -> dense 120 -> dense 84 -> classes."""
    import keras

    h, w, channels = cnn_input(task)
    return keras.Sequential(
        [
            keras.Input(shape=task.input_shape),
            keras.layers.Reshape((h, w, channels), name="channels"),
            keras.layers.Conv2D(6, 5, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(16, 5, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(120, activation="relu", name="dense1"),
            keras.layers.Dense(84, activation="relu", name="dense2"),
            keras.layers.Dense(task.num_classes, activation="softmax", name="classifier"),
        ],
        name="cnn",
    )


def _text(task: Task, what: str) -> None:
    if task.kind != "tokens":
        raise ModelError(
            f"--model {what} reads token sequences; this data set holds {task.describe()} "
            "(use --dataset shakespeare, shakespeare_words or your own token arrays, or --model mlp|cnn|logreg)"
        )


def _embedding(task: Task) -> int:
    """The FedAvg paper's 8 dimensions for characters; 96 for a word vocabulary (TFF's Stack Overflow model)."""
    return 8 if (task.vocab_size or 0) <= 256 else 96


def build_lstm(task: Task) -> Any:
    """The FedAvg paper's character model (McMahan et al. 2017): an 8-dimensional embedding, two LSTM
    layers of 256 units, softmax over the classes (the next character, or word)."""
    import keras

    _text(task, "lstm")
    return keras.Sequential(
        [
            keras.Input(shape=task.input_shape, dtype="int32"),
            keras.layers.Embedding(task.vocab_size, _embedding(task), name="embedding"),
            keras.layers.LSTM(256, return_sequences=True, name="lstm1"),
            keras.layers.LSTM(256, name="lstm2"),
            keras.layers.Dense(task.num_classes, activation="softmax", name="classifier"),
        ],
        name="lstm",
    )


def build_lstm_small(task: Task) -> Any:
    """A smaller, faster text model: the same embedding, one LSTM layer of 128 units."""
    import keras

    _text(task, "lstm-small")
    return keras.Sequential(
        [
            keras.Input(shape=task.input_shape, dtype="int32"),
            keras.layers.Embedding(task.vocab_size, _embedding(task), name="embedding"),
            keras.layers.LSTM(128, name="lstm1"),
            keras.layers.Dense(task.num_classes, activation="softmax", name="classifier"),
        ],
        name="lstm_small",
    )


MODELS: dict[str, ModelBuilder] = {
    "mlp": build_mlp,
    "cnn": build_cnn,
    "logreg": build_logreg,
    "lstm": build_lstm,
    "lstm-small": build_lstm_small,
}
TEXT_MODELS = ("lstm", "lstm-small")


def builder_name(builder: ModelBuilder) -> str:
    """A built-in's name, else "module:qualname" (what config.json records and --model accepts)."""
    for name, known in MODELS.items():
        if builder is known:
            return name
    return f"{getattr(builder, '__module__', '?')}:{getattr(builder, '__qualname__', repr(builder))}"


def resolve_builder(name: str) -> ModelBuilder:
    """--model NAME: a built-in, or "package.module:function" imported from the Python path."""
    if name in MODELS:
        return MODELS[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        close = difflib.get_close_matches(name, list(MODELS), 1)
        raise ModelError(
            f"--model {name!r}: use one of {', '.join(sorted(MODELS))} or package.module:function"
            + (f" (did you mean {close[0]}?)" if close else "")
        )
    target = import_object(name, "--model", ModelError)
    if not callable(target):
        raise ModelError(f"--model {name}: {attr} is not callable")
    return target


def call_builder(builder: ModelBuilder, task: Task) -> Any:
    """builder(task); a builder written for the 28x28 seed task that takes no argument still works."""
    try:
        takes_task = bool(inspect.signature(builder).parameters)
    except (TypeError, ValueError):
        takes_task = True
    try:
        return builder(task) if takes_task else builder()
    except Exception as e:  # the user's code failed: say where in it, also from a Ray worker
        raise ModelError(f"the model builder {builder_name(builder)} raised {type(e).__name__}: {e}{_where(e)}") from e


def _where(e: BaseException) -> str:
    """ " (at FILE:LINE in FUNCTION)" of the innermost frame outside fedsim and the libraries."""
    import traceback

    frames = [f for f in traceback.extract_tb(e.__traceback__) if "site-packages" not in f.filename]
    mine = [f for f in frames if "/fedsim/" not in f.filename.replace("\\", "/")]
    if not mine:
        return ""
    f = mine[-1]
    return f" (at {f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()})"


@dataclass(frozen=True)
class Optimizer:
    """The on-device optimiser baked into `train`. Its state (momentum, Adam moments, step count)
    starts from zero at every `restore`, so it never carries from one device to the next, and
    `save` never writes it."""

    name: str = "sgd"  # sgd | momentum | adam
    lr: float = 0.05
    momentum: float = 0.9  # momentum only
    beta1: float = 0.9  # adam only
    beta2: float = 0.999  # adam only
    epsilon: float = 1e-7  # adam only

    def build(self) -> Any:
        import keras

        if self.name == "sgd":
            return keras.optimizers.SGD(learning_rate=self.lr)
        if self.name == "momentum":
            return keras.optimizers.SGD(learning_rate=self.lr, momentum=self.momentum)
        if self.name == "adam":
            return keras.optimizers.Adam(
                learning_rate=self.lr, beta_1=self.beta1, beta_2=self.beta2, epsilon=self.epsilon
            )
        raise ModelError(f"--device-optimizer must be sgd, momentum or adam, got {self.name!r}")


OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclass(frozen=True)
class ArtifactRecipe:
    """Everything that determines the artifact: builder, task, optimiser, seed, checkpoint layout, runtime.
    Small and picklable (cloudpickle carries notebook builders), so the conversion can run wherever
    TensorFlow (or torch) already is."""

    builder: ModelBuilder = build_mlp
    task: Task = field(default_factory=lambda: Task((28, 28), "image", 10))
    optimizer: Optimizer = Optimizer()
    seed: int = 0
    checkpoint_format: str = "packed"  # "packed" or "tensors" (the guide's): see fedsim.model.signatures
    variant: str | None = None  # None (the guide's train) or one of fedsim.model.signatures.VARIANTS
    runtime: str = "tflite"  # "tflite" (a .tflite) or "executorch" (a .pte training program)
