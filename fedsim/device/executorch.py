"""The ExecuTorch runtime: one training program (.pte) driven through the same small interface as the
TFLite runtime (restore, train a batch, infer, save), so hosts, strategies and the clock do not
know which runs.

A fedsim program (fedsim.model.pte) trains `forward(x, y) -> (loss, logits)` and carries its
optimiser as constant methods. restore and save are the runtime's side of the checkpoint contract:
the global model's TF v1 checkpoint is read and copied into the program's live parameters, and
`save` writes them back in the same format, so the coordinator reads an ExecuTorch device's upload as
it reads a TFLite device's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.checkpoint import CheckpointError, read_checkpoint_file, unpack
from fedsim.checkpoint.tfv1_write import write_tfv1
from fedsim.data.dataset import as_inputs
from fedsim.model.pte import CHECKPOINT_FORMAT, EXECUTORCH_OPTIMIZERS, LR, MOMENTUM, OPTIMIZER, TRAIN_METHOD
from fedsim.model.signatures import PACKED
from fedsim.model.tflog import quiet_native_stderr

# the program's metadata methods (executorch.extension.training): the parameters' names of a training
# method, and where its outputs turn from user outputs to gradients
_FQN, _GRADS = "__et_training_fqn_", "__et_training_gradients_index_"
_DTYPES = {6: np.float32, 4: np.int64, 3: np.int32, 0: np.uint8}  # ExecuTorch ScalarType -> numpy


class ProgramError(ValueError):
    """A .pte cannot serve as a device's training program (the message names the check that failed)."""


def _quietly(call: Any, *args: Any) -> Any:
    """ExecuTorch's loaders warn that the API is experimental and log CPU probing to stderr at every load."""
    with warnings.catch_warnings(), quiet_native_stderr():
        warnings.simplefilter("ignore")
        return call(*args)


class ExecuTorchRunner:
    """One ExecuTorch training module of the program (one thread, as a phone's), its live parameters
    and the on-device optimiser the program names (its state restarts at every restore)."""

    honours: frozenset[str] = frozenset()  # instructions beyond the guide's: none yet

    def __init__(self, artifact: bytes, num_threads: int = 1) -> None:
        with warnings.catch_warnings(), quiet_native_stderr():  # CPU probing and pool resets log to stderr
            warnings.simplefilter("ignore")
            from executorch.extension.pybindings import portable_lib
            from executorch.extension.training import _load_for_executorch_for_training_from_buffer

            portable_lib._unsafe_reset_threadpool(num_threads)
        # The loader keeps a pointer into the buffer, not a reference: it must outlive the module.
        self._buffer = bytes(artifact)
        try:  # the program is parsed lazily: reading its method table is the first real read
            self._module = _quietly(_load_for_executorch_for_training_from_buffer, self._buffer)
            program = self._module.model
            methods = set(_quietly(program.method_names))
        except Exception as e:
            raise ProgramError(f"ExecuTorch cannot load it: {_first_line(e)}") from None
        training = sorted(m.removeprefix(_FQN) for m in methods if m.startswith(_FQN))
        if not training:
            raise ProgramError(
                f"the .pte has no training method (methods: {', '.join(sorted(methods)) or 'none'}); export the "
                "model with torch.export.experimental._export_forward_backward (fedsim.model.pte does)"
            )
        self.method = TRAIN_METHOD if TRAIN_METHOD in training else training[0]
        meta = program.method_meta(self.method)
        if meta.num_inputs() != 2:
            raise ProgramError(
                f"its training method {self.method} takes {meta.num_inputs()} inputs; fedsim's take (x, y)"
            )
        x_meta, y_meta = meta.input_tensor_meta(0), meta.input_tensor_meta(1)
        self.x_dtype = np.dtype(_DTYPES.get(x_meta.dtype(), np.float32))
        self.y_dtype = np.dtype(_DTYPES.get(y_meta.dtype(), np.int64))
        self.sample_shape = tuple(int(d) for d in x_meta.sizes()[1:])
        self.max_batch = int(x_meta.sizes()[0])  # a dynamic dimension reports its upper bound
        self.methods = frozenset(methods)
        if int(program.run_method(_GRADS + self.method, ())[0]) < 2:  # user outputs before the gradients
            raise ProgramError(
                f"its training method {self.method} returns the loss only; fedsim's return (loss, logits) so a "
                "device can evaluate with the program it trains"
            )
        self.classes = int(meta.output_tensor_meta(1).sizes()[-1])  # the logits' last dimension
        self.optimizer = self._constant(OPTIMIZER, None)
        if self.optimizer is None:
            raise ProgramError(
                "the .pte names no on-device optimiser (constant methods fedsim_optimizer, fedsim_lr): export it "
                "with fedsim.model.pte.export_pte, or add them with to_edge(..., constant_methods=...)"
            )
        if self.optimizer not in EXECUTORCH_OPTIMIZERS:
            raise ProgramError(
                f"its optimiser {self.optimizer!r} is not one ExecuTorch's bindings offer "
                f"({', '.join(EXECUTORCH_OPTIMIZERS)})"
            )
        self.lr = float(self._constant(LR, 0.0))
        self.momentum = float(self._constant(MOMENTUM, 0.0))
        self.packed = self._constant(CHECKPOINT_FORMAT, "packed") == "packed"
        # Parameters exist only after a first forward_backward: one on a sample of one, which also
        # shows whether the batch dimension is dynamic (a shard's last batch is smaller than the rest).
        try:
            self._zeros_step(1)
        except Exception as e:
            try:
                self._zeros_step(self.max_batch)
            except Exception:
                raise ProgramError(f"its training method fails on a batch of zeros: {_first_line(e)}") from None
            raise ProgramError(
                f"its training method takes batches of exactly {self.max_batch} (exported without a dynamic batch "
                f"dimension); fedsim trains batches of --batch-size and a shard's last batch is smaller: export "
                f"with dynamic_shapes (torch.export.Dim), as fedsim.model.pte does"
            ) from None
        self._params: dict[str, Any] = dict(self._module.named_parameters())
        self.layout: list[tuple[str, tuple[int, ...]]] = [
            (name, tuple(int(d) for d in self._params[name].shape)) for name in sorted(self._params)
        ]
        self._sgd: Any = None

    def _zeros_step(self, n: int) -> None:
        """forward_backward on n zero samples (no optimiser step: the weights stay as they are)."""
        import torch

        x = torch.zeros((n, *self.sample_shape), dtype=_torch_dtype(self.x_dtype))
        _quietly(self._module.forward_backward, self.method, (x, torch.zeros(n, dtype=_torch_dtype(self.y_dtype))))

    def _constant(self, name: str, default: Any) -> Any:
        if name not in self.methods:
            return default
        return self._module.model.run_method(name, ())[0]

    def inputs(self, x: np.ndarray) -> np.ndarray:
        """The data's inputs -> what the program's `x` takes (uint8 images scaled to [0, 1])."""
        return as_inputs(x, self.x_dtype)

    def labels(self, y: np.ndarray) -> np.ndarray:
        return y if y.dtype == self.y_dtype else y.astype(self.y_dtype)

    def weights(self) -> dict[str, np.ndarray]:
        """The program's live parameters, by name (copies)."""
        return {name: self._params[name].detach().numpy().copy() for name, _ in self.layout}

    def restore(self, path: str | os.PathLike[str], extras: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Copy the checkpoint at `path` into the program's parameters; the optimiser starts afresh."""
        import torch

        given = sorted(k for k, v in (extras or {}).items() if v is not None)
        if given:
            raise ValueError(
                f"this .pte's restore takes no {', '.join(given)} (an ExecuTorch program honours nothing beyond "
                "the guide yet)"
            )
        weights = unpack(read_checkpoint_file(path), self.layout)
        missing = [name for name, _ in self.layout if name not in weights]
        if missing or len(weights) != len(self.layout):
            extra = sorted(set(weights) - set(self._params))
            raise CheckpointError(
                f"the checkpoint's weights do not match the program's parameters (missing {', '.join(missing) or '-'}; "
                f"unknown {', '.join(extra) or '-'})"
            )
        with torch.no_grad():
            for name, shape in self.layout:
                value = np.require(weights[name], np.float32, ["W"])  # torch refuses read-only arrays
                if value.shape != shape:
                    raise CheckpointError(
                        f"{name} is {list(value.shape)} in the checkpoint, {list(shape)} in the program"
                    )
                self._params[name].copy_(torch.from_numpy(value))
        self._sgd = None  # a new optimiser (and momentum) at the first train step
        return weights

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_bytes(self.checkpoint())

    def checkpoint(self) -> bytes:
        """The parameters as the TF v1 checkpoint `save` writes (packed, or one tensor per weight)."""
        weights = self.weights()
        if self.packed:
            return write_tfv1({PACKED: np.concatenate([weights[name].ravel() for name, _ in self.layout])})
        return write_tfv1(weights)

    def _optimizer(self) -> Any:
        if self._sgd is None:
            from executorch.extension.training import get_sgd_optimizer

            momentum = self.momentum if self.optimizer == "momentum" else 0.0
            self._sgd = get_sgd_optimizer(self._params, self.lr, momentum, 0.0, 0.0, False)
        return self._sgd

    def train(self, x: np.ndarray, y: np.ndarray, extras: Mapping[str, Any] | None = None) -> float:
        """One step of the program's optimiser on a batch; its loss. A batch larger than the program's
        planned memory runs in pieces whose gradients are summed, weighted by size: one step still."""
        import torch

        if extras and any(v is not None for v in extras.values()):
            raise ValueError(
                f"this .pte's train takes no {', '.join(sorted(extras))} (an ExecuTorch program honours nothing "
                "beyond the guide yet)"
            )
        xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
        n = len(y)
        if n <= self.max_batch:
            loss = float(self._module.forward_backward(self.method, (xt, yt))[0])
            self._optimizer().step(self._module.named_gradients())
            return loss
        total: dict[str, Any] = {}
        loss = 0.0
        for i in range(0, n, self.max_batch):
            xs, ys = xt[i : i + self.max_batch], yt[i : i + self.max_batch]
            share = len(ys) / n
            loss += float(self._module.forward_backward(self.method, (xs, ys))[0]) * share
            for name, grad in self._module.named_gradients().items():
                total[name] = total[name] + grad * share if name in total else grad * share
        self._optimizer().step(total)
        return loss

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The program's logits for x (its training method, with no optimiser step)."""
        import torch

        xt = torch.from_numpy(np.ascontiguousarray(x))
        zeros = torch.zeros(min(len(x), self.max_batch), dtype=_torch_dtype(self.y_dtype))
        out = []
        for i in range(0, len(x), self.max_batch):
            part = xt[i : i + self.max_batch]
            out.append(self._module.forward_backward(self.method, (part, zeros[: len(part)]))[1].numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def initial_checkpoint(self, scratch: Path) -> bytes:
        """The weights the program was exported with (the round-1 global model)."""
        return self.checkpoint()


def _torch_dtype(dtype: np.dtype) -> Any:
    import torch

    known = {np.float32: torch.float32, np.int64: torch.int64, np.int32: torch.int32, np.uint8: torch.uint8}
    return known[np.dtype(dtype).type]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
