"""The TFLite runtime: one tf.lite.Interpreter of the artifact, driven through its four signatures."""

from __future__ import annotations

import os
import shutil
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.dataset import as_inputs, one_hot
from fedsim.device.tflite_loader import interpreter_class
from fedsim.model.signatures import (
    ANCHOR_PATH,
    CHECKPOINT_PATH,
    CONTROL_PATH,
    CORRECTION,
    INFER,
    LOSS,
    MASK_INPUT,
    MU,
    OUTPUT,
    RESTORE,
    SAVE,
    SIGNATURES,
    TRAIN,
    honours,
)
from fedsim.model.tflog import quiet_native_stderr


class Runner:
    """One tf.lite.Interpreter of the artifact (one thread, as on a phone) and its signature runners."""

    def __init__(self, artifact: bytes, num_threads: int = 1) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with warnings.catch_warnings(), quiet_native_stderr():
            # tf.lite.Interpreter warns that it is deprecated in favour of ai-edge-litert, which lacks
            # the Flex delegate the train/save/restore signatures need (see pyproject.toml).
            warnings.simplefilter("ignore")
            # TensorFlow's own interpreter, without importing the TensorFlow package where it can
            self.interpreter = interpreter_class()(model_content=artifact, num_threads=num_threads)
        available = self.interpreter.get_signature_list()
        missing = [s for s in SIGNATURES if s not in available]
        if missing:
            raise ValueError(
                f"missing signature(s) {', '.join(missing)}; it has {', '.join(sorted(available)) or 'none'} "
                f"(the guide's contract: {', '.join(SIGNATURES)})"
            )
        self._train = self.interpreter.get_signature_runner(TRAIN)
        self._infer = self.interpreter.get_signature_runner(INFER)
        self._save = self.interpreter.get_signature_runner(SAVE)
        self._restore = self.interpreter.get_signature_runner(RESTORE)
        inputs = self._train.get_input_details()
        if not {"x", "y"} <= set(inputs) <= {"x", "y", MU, MASK_INPUT}:
            raise ValueError(
                f"the .tflite's train signature takes {sorted(inputs)}; the guide's contract is train(x, y)"
                f" (fedsim's variants add mu and mask)"
            )
        # the proximal variant's train(x, y, mu): mu = 0 is the plain loss; the mask variant's mask: ones
        self.takes_mu = MU in inputs
        self._mask_size = int(inputs[MASK_INPUT]["shape"][0]) if MASK_INPUT in inputs else 0
        self._train_extras = set(inputs) - {"x", "y"}
        # the control variant's restore(..., control_path): c - c_i from a control file; the anchor
        # variant's restore(..., anchor_path): the proximal term's anchor from a checkpoint
        restore_inputs = self._restore.get_input_details()
        self.takes_control = CONTROL_PATH in restore_inputs
        self.takes_anchor = ANCHOR_PATH in restore_inputs
        # what instructions this artifact can carry out (fedsim.core.instructions)
        self.honours = honours(inputs, restore_inputs)
        self._zero_control: Path | None = None
        self._folder: Path | None = None
        # fedsim's artifacts take the data's compact dtype (uint8 pixels, scaled in the graph) and class
        # ids; one made by an earlier fedsim (a resumed run's) or by hand from the guide may take
        # float32 pixels in [0, 1] and one-hot labels: `inputs` and `labels` convert for it.
        self.x_dtype = np.dtype(inputs["x"]["dtype"])
        y_shape = inputs["y"]["shape_signature"]
        self.one_hot_classes = int(y_shape[-1]) if len(y_shape) == 2 else None
        self.y_dtype = np.dtype(inputs["y"]["dtype"])

    @property
    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """(weight name, shape) of every weight, from the restore signature's outputs, in the order a
        packed checkpoint holds them (fedsim.checkpoint.unpack)."""
        details = self._restore.get_output_details()
        return [(name, tuple(int(d) for d in details[name]["shape"])) for name in sorted(details)]

    def inputs(self, x: np.ndarray) -> np.ndarray:
        """The data's inputs -> what this artifact's `x` takes."""
        return as_inputs(x, self.x_dtype)

    def labels(self, y: np.ndarray) -> np.ndarray:
        """int class ids -> what this artifact's `y` takes (ids, or one-hot rows as in the guide)."""
        if self.one_hot_classes is not None:
            return one_hot(y, self.one_hot_classes)
        return y if y.dtype == self.y_dtype else y.astype(self.y_dtype)

    def restore(self, path: str | os.PathLike[str], extras: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Restore the weights from `path`. `extras`: what instructions hand restore besides the
        checkpoint: "control", SCAFFOLD's correction (an array), which a control artifact reads from a
        control file (none given: zeros, i.e. plain training); "anchor", the proximal term's anchor (a
        checkpoint's path; none given: the restored weights)."""
        inputs = {CHECKPOINT_PATH: np.array(os.fsencode(path))}
        extras = extras or {}
        control, anchor = extras.get("control"), extras.get("anchor")
        unknown = sorted(set(extras) - {"control", "anchor"})
        if (
            unknown
            or (control is not None and not self.takes_control)
            or (anchor is not None and not self.takes_anchor)
        ):
            wanted = ", ".join(unknown) or ("control file" if control is not None else "anchor")
            raise ValueError(
                f"this .tflite's restore takes no {wanted} file (it honours "
                f"{', '.join(sorted(self.honours)) or 'nothing beyond the guide'})"
            )
        if self.takes_anchor:
            inputs[ANCHOR_PATH] = np.array(os.fsencode(path if anchor is None else anchor))
        if self.takes_control:
            target = self.zero_control() if control is None else self._scratch() / "control.ckpt"
            if control is not None:
                write_control(control, target)
            inputs[CONTROL_PATH] = np.array(os.fsencode(target))
        return self._restore(**inputs)

    def _scratch(self) -> Path:
        """A folder of this Runner's own (control files), on tmpfs where there is one, removed with it."""
        if self._folder is None:
            from fedsim.checkpoint import scratch_dir

            self._folder = scratch_dir("fedsim-runner-")  # named by pid: a killed host's is swept
            weakref.finalize(self, shutil.rmtree, self._folder, True)
        return self._folder

    def zero_control(self) -> Path:
        """A control file of zeros for this artifact's weights (made once)."""
        if self._zero_control is None:
            size = sum(int(np.prod(shape)) for _, shape in self.layout)
            self._zero_control = self._scratch() / "zero.ckpt"
            write_control(np.zeros(size, np.float32), self._zero_control)
        return self._zero_control

    def save(self, path: str | os.PathLike[str]) -> None:
        self._save(**{CHECKPOINT_PATH: np.array(os.fsencode(path))})

    def train(self, x: np.ndarray, y: np.ndarray, extras: Mapping[str, np.ndarray] | None = None) -> float:
        """One train step on a batch; `extras`: what instructions hand train besides the batch (here
        "mu", the fedprox variant's proximal weight; a fedprox artifact trains without one at mu = 0)."""
        if extras and not set(extras) <= self._train_extras:
            raise ValueError(
                f"this .tflite's train takes no {', '.join(sorted(set(extras) - self._train_extras))} "
                f"(it honours {', '.join(sorted(self.honours)) or 'nothing beyond the guide'})"
            )
        if len(extras or {}) == len(self._train_extras):
            return float(self._train(x=x, y=y, **(extras or {}))[LOSS])
        given = dict(extras or {})
        if self.takes_mu:
            given.setdefault(MU, np.array(0, np.float32))
        if self._mask_size:
            given.setdefault(MASK_INPUT, np.ones(self._mask_size, np.float32))
        return float(self._train(x=x, y=y, **given)[LOSS])

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self._infer(x=x)[OUTPUT]

    def initial_checkpoint(self, scratch: Path) -> bytes:
        """The weights baked into the artifact, exported through `save` (the round-1 global model)."""
        path = scratch / "initial.ckpt"
        self.save(path)
        data = path.read_bytes()
        path.unlink()
        return data


def write_control(correction: np.ndarray, path: Path) -> int:
    """Write SCAFFOLD's correction c - c_i (one float32 vector, weights in name order) as the control
    file a scaffold artifact's `restore` reads; its size in bytes."""
    from fedsim.checkpoint.tfv1_write import write_tfv1

    data = write_tfv1({CORRECTION: np.asarray(correction, dtype=np.float32)})
    path.write_bytes(data)
    return len(data)
