"""PyTorch twins of the built-in Keras models (`mlp`, `logreg`, `cnn`), for the ExecuTorch runtime.

Each has the Keras model's layers and weight shapes (PyTorch's layout: a Linear's weight is the
Keras kernel transposed) and returns logits; the training program adds the cross-entropy (the
Keras models' softmax and loss are the same function). A model takes what the runtime hands it:
images as float32 in [0, 1] of the task's shape, features as float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsim.core.task import Task
from fedsim.model.builders import ModelError, cnn_input


def _flat_inputs(task: Task) -> int:
    if task.kind == "tokens":
        raise ModelError(
            f"--runtime executorch has no text model yet: --model mlp|cnn|logreg need image or feature inputs; "
            f"this data set has {task.describe()} (use --runtime tflite for --model lstm)"
        )
    size = 1
    for d in task.input_shape:
        size *= d
    return size


def _named(**layers: Any) -> Any:
    """A Sequential whose layers carry the Keras model's names: they become the weights' names in the
    checkpoint ("hidden.weight")."""
    from collections import OrderedDict

    from torch import nn

    return nn.Sequential(OrderedDict(layers))


def torch_mlp(task: Task) -> Any:
    """The guide's model: Flatten -> Linear(128) + relu -> Linear(classes)."""
    from torch import nn

    return _named(
        flatten=nn.Flatten(),
        hidden=nn.Linear(_flat_inputs(task), 128),
        relu=nn.ReLU(),
        classifier=nn.Linear(128, task.num_classes),
    )


def torch_logreg(task: Task) -> Any:
    """Multinomial logistic regression: Flatten -> Linear(classes)."""
    from torch import nn

    return _named(flatten=nn.Flatten(), classifier=nn.Linear(_flat_inputs(task), task.num_classes))


class _Channels:
    """(N, H, W) or (N, H, W, C) images -> (N, C, H, W), PyTorch's convolution layout."""

    @staticmethod
    def module(task: Task) -> Any:
        from torch import nn

        class Channels(nn.Module):
            def forward(self, x: Any) -> Any:
                return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)

        return Channels()


def max_pool2(task: Task) -> Any:
    """2x2 max-pooling, stride 2 (Keras' MaxPooling2D(2): odd rows and columns dropped), written as a
    reshape and a max so that its gradient is not ExecuTorch's max_pool2d_with_indices_backward:
    that kernel adds into memory it never zeroes (pytorch/executorch#21686, fixed after 1.5.1), and
    every convolution before it then trains on stale bytes. The forward is max-pooling's exactly; the
    gradient too, but where two inputs of a window tie for the maximum (it is split between them;
    after a ReLU the ties are zeros, whose gradient is zero either way)."""
    from torch import nn

    class MaxPool2(nn.Module):
        def forward(self, x: Any) -> Any:
            n, c, h, w = x.shape
            x = x[:, :, : h // 2 * 2, : w // 2 * 2]
            return x.reshape(n, c, h // 2, 2, w // 2, 2).amax(dim=(3, 5))

    return MaxPool2()


def torch_cnn(task: Task) -> Any:
    """The small CNN of the non-IID FMNIST literature (LeNet-5 shape), as the Keras `cnn`: conv 6@5x5
    -> max-pool 2 -> conv 16@5x5 -> max-pool 2 -> dense 120 -> dense 84 -> classes."""
    from torch import nn

    h, w, channels = cnn_input(task)
    out_h, out_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    return _named(
        channels=_Channels.module(task),
        conv1=nn.Conv2d(channels, 6, 5),
        relu1=nn.ReLU(),
        pool1=max_pool2(task),
        conv2=nn.Conv2d(6, 16, 5),
        relu2=nn.ReLU(),
        pool2=max_pool2(task),
        flatten=nn.Flatten(),
        dense1=nn.Linear(16 * out_h * out_w, 120),
        relu3=nn.ReLU(),
        dense2=nn.Linear(120, 84),
        relu4=nn.ReLU(),
        classifier=nn.Linear(84, task.num_classes),
    )


# the built-in Keras model's name -> its PyTorch twin
TORCH_MODELS: dict[str, Callable[[Task], Any]] = {"mlp": torch_mlp, "logreg": torch_logreg, "cnn": torch_cnn}


def from_keras(weights: dict[str, Any], task: Task) -> dict[str, Any]:
    """A built-in Keras model's weights ("mlp/hidden/kernel") as its PyTorch twin's training program
    names and lays them out ("net.hidden.weight"): a Dense kernel transposed, a convolution kernel
    from (H, W, in, out) to (out, in, H, W), and the rows of the first Dense layer after the
    convolutions reordered from Keras' channels-last flattening to PyTorch's channels-first. What
    --init-from takes to start an ExecuTorch run from a TFLite run's weights."""
    import numpy as np

    out: dict[str, Any] = {}
    for name, value in weights.items():
        parts = name.split("/")
        if len(parts) != 3 or parts[2] not in ("kernel", "bias"):
            raise ModelError(f"{name}: not a weight of a built-in Keras model (model/layer/kernel|bias)")
        model, layer, kind = parts
        value = np.asarray(value)
        if kind == "kernel" and value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif kind == "kernel":
            if model == "cnn" and layer == "dense1":
                value = value[_channels_first_rows(task, value.shape[0])]
            value = value.T
        out[f"net.{layer}.{'weight' if kind == 'kernel' else 'bias'}"] = np.ascontiguousarray(value)
    return out


def _channels_first_rows(task: Task, rows: int) -> Any:
    """Row i of PyTorch's flattened (C, H, W) features is row order[i] of Keras' flattened (H, W, C)."""
    import numpy as np

    h, w = task.input_shape[:2]
    out_h, out_w = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
    channels = rows // (out_h * out_w)
    return np.arange(rows).reshape(out_h, out_w, channels).transpose(2, 0, 1).ravel()
