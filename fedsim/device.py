"""A simulated phone: the .tflite artifact driven through its signatures, on the device's own shard.

No Ray here. A `Runner` wraps one tf.lite.Interpreter; a `Device` is a shard plus a seed and runs one
round through whatever Runner its host lends it. A device that is not training costs only its shard.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.data.dataset import one_hot, scale_images
from fedsim.model.signatures import (
    CHECKPOINT_PATH,
    CONTROL_PATH,
    CORRECTION,
    INFER,
    LOSS,
    MU,
    OUTPUT,
    RESTORE,
    SAVE,
    SIGNATURES,
    TRAIN,
)
from fedsim.model.tflog import quiet_native_stderr


class Runner:
    """One tf.lite.Interpreter of the artifact (one thread, as on a phone) and its signature runners."""

    def __init__(self, artifact: bytes, num_threads: int = 1) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        with warnings.catch_warnings(), quiet_native_stderr():
            # tf.lite.Interpreter warns that it is deprecated in favour of ai-edge-litert, which lacks
            # the Flex delegate the train/save/restore signatures need (see pyproject.toml).
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_content=artifact, num_threads=num_threads)
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
        if set(inputs) not in ({"x", "y"}, {"x", "y", MU}):
            raise ValueError(
                f"the .tflite's train signature takes {sorted(inputs)}; the guide's contract is train(x, y)"
                f" (fedsim's fedprox variant: train(x, y, mu))"
            )
        # the fedprox variant's train(x, y, mu); mu = 0 is the plain loss
        self.takes_mu = MU in inputs
        # the scaffold variant's restore(checkpoint_path, control_path): c - c_i from a control file
        self.takes_control = CONTROL_PATH in self._restore.get_input_details()
        self._zero_control: Path | None = None
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
        if x.dtype == self.x_dtype:
            return x
        if x.dtype == np.uint8 and self.x_dtype == np.float32:
            return scale_images(x)
        return x.astype(self.x_dtype)

    def labels(self, y: np.ndarray) -> np.ndarray:
        """int class ids -> what this artifact's `y` takes (ids, or one-hot rows as in the guide)."""
        if self.one_hot_classes is not None:
            return one_hot(y, self.one_hot_classes)
        return y if y.dtype == self.y_dtype else y.astype(self.y_dtype)

    def restore(
        self, path: str | os.PathLike[str], control: str | os.PathLike[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Restore the weights from `path`; a scaffold artifact also reads its correction from `control`
        (a control file, see write_control; none: a zero correction, i.e. plain training)."""
        if not self.takes_control:
            if control is not None:
                raise ValueError(
                    "this .tflite's restore takes no control file; SCAFFOLD needs the scaffold "
                    "variant, which fedsim builds for --strategy scaffold"
                )
            return self._restore(**{CHECKPOINT_PATH: np.array(os.fsencode(path))})
        if control is None:
            control = self.zero_control()
        return self._restore(
            **{CHECKPOINT_PATH: np.array(os.fsencode(path)), CONTROL_PATH: np.array(os.fsencode(control))}
        )

    def zero_control(self) -> Path:
        """A control file of zeros for this artifact's weights (made once, removed with the Runner)."""
        if self._zero_control is None:
            import tempfile

            size = sum(int(np.prod(shape)) for _, shape in self.layout)
            folder = Path(
                tempfile.mkdtemp(prefix="fedsim-control-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
            )
            self._zero_control = folder / "zero.ckpt"
            write_control(np.zeros(size, np.float32), self._zero_control)
            weakref.finalize(self, shutil.rmtree, folder, True)
        return self._zero_control

    def save(self, path: str | os.PathLike[str]) -> None:
        self._save(**{CHECKPOINT_PATH: np.array(os.fsencode(path))})

    def train(self, x: np.ndarray, y: np.ndarray, mu: float = 0.0) -> float:
        if self.takes_mu:
            return float(self._train(x=x, y=y, mu=np.float32(mu))[LOSS])
        if mu:
            raise ValueError(
                "this .tflite's train has no proximal term (train(x, y)); FedProx needs the fedprox "
                "variant, which fedsim builds for --strategy fedprox"
            )
        return float(self._train(x=x, y=y)[LOSS])

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
    from fedsim.tfv1_write import write_tfv1

    data = write_tfv1({CORRECTION: np.asarray(correction, dtype=np.float32)})
    path.write_bytes(data)
    return len(data)


_SHUFFLE = threading.local()


def shuffle_rng(seed: int, device_id: int, round_num: int) -> np.random.Generator:
    """The generator that shuffles one device's data in one round: Philox keyed by (seed, device,
    round), a counter-based generator made for many independent keyed streams.

    One Philox per thread is re-keyed for each device instead of building a Generator from a
    SeedSequence: a host does this for every device every round, and re-keying costs a few
    microseconds where a new seeded Generator costs tens (measured inside a host's round).
    The generator is valid until the next call in the same thread.
    """
    state = getattr(_SHUFFLE, "state", None)
    if state is None:
        bit_generator = np.random.Philox(0)
        state = _SHUFFLE.state = (bit_generator, np.random.Generator(bit_generator), np.zeros(2, np.uint64))
    bit_generator, generator, key = state
    key[0] = seed % 2**64
    key[1] = (device_id << 32 | round_num) % 2**64
    bit_generator.state = {
        "bit_generator": "Philox",
        "state": {"counter": np.zeros(4, np.uint64), "key": key},
        "buffer": np.zeros(4, np.uint64),
        "buffer_pos": 4,  # empty: the first draw comes from counter 0 under the new key
        "has_uint32": 0,
        "uinteger": 0,
    }
    return generator


@dataclass(frozen=True)
class TrainResult:
    """What a device sends back after a round."""

    device_id: int
    samples: int
    train_loss: float
    train_s: float  # seconds in the device's signatures: restore, every train batch, save
    start_loss: float  # the first train batch's loss: the global model's loss on the device's data
    checkpoint_path: Path  # the file `save` wrote; the host reads it, the next device overwrites it


@dataclass
class Device:
    """One phone's data (inputs in the task's dtype, int32 class ids) and seed. Holds no interpreter
    between rounds."""

    device_id: int
    x: np.ndarray
    y: np.ndarray
    seed: int
    x_test: np.ndarray | None = None  # the device's own test split, if it keeps one
    y_test: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return len(self.y)

    def run_round(
        self,
        runner: Runner,
        global_checkpoint: Path,
        round_num: int,
        local_epochs: int,
        batch_size: int,
        out: Path,
        mu: float = 0.0,
        flip_labels: int = 0,
        control: Path | None = None,
        steps: int | None = None,
    ) -> TrainResult:
        """restore the global model -> local_epochs of shuffled mini-batches through `train` -> `save` to out.

        mu: FedProx's proximal weight (the fedprox variant's train input). flip_labels: the number of
        classes C of a label-flipping attacker, which trains on C - 1 - y instead of y (0: honest).
        control: SCAFFOLD's control file (the scaffold variant's restore reads c - c_i from it).
        steps: stop after this many train steps (a straggler's work by the deadline); None: all."""
        # Shuffling depends on (seed, device, round) only, never on which host runs the device.
        rng = shuffle_rng(self.seed, self.device_id, round_num)
        # Shuffled before the clock starts, so train_s counts the device's signature calls and
        # nothing the simulator adds.
        epochs = []
        for _ in range(local_epochs):
            order = rng.permutation(self.samples)
            y = self.y[order] if not flip_labels else (flip_labels - 1 - self.y[order]).astype(self.y.dtype)
            epochs.append((runner.inputs(self.x[order]), runner.labels(y)))
        start = time.perf_counter()
        runner.restore(global_checkpoint, control)
        loss_sum, seen, start_loss = 0.0, 0, float("nan")
        budget = steps if steps is not None else -1
        for xs, ys in epochs:
            for i in range(0, self.samples, batch_size):
                if budget == 0:
                    break
                budget -= 1
                xb, yb = xs[i : i + batch_size], ys[i : i + batch_size]
                loss = runner.train(xb, yb, mu)
                if not seen:
                    start_loss = loss
                loss_sum += loss * len(yb)
                seen += len(yb)
        runner.save(out)
        train_s = time.perf_counter() - start
        return TrainResult(self.device_id, self.samples, loss_sum / max(seen, 1), train_s, start_loss, out)


def evaluate_counts(
    runner: Runner, checkpoint: Path, blocks: Sequence[tuple[np.ndarray, np.ndarray]], restore: bool = True
) -> tuple[int, np.ndarray]:
    """Restore `checkpoint`, run `infer` on each block of (inputs, labels), and return
    (correctly classified, per-sample cross-entropy).

    One `infer` call per block: TFLite's matrix kernels may round differently for another batch
    size, so callers keep blocks fixed to get the same numbers however the blocks are spread.
    """
    if restore:
        runner.restore(checkpoint)
    if not blocks:
        return 0, np.zeros(0)
    # Scored once over all blocks (per sample, so the same as per block; a host evaluates after
    # every round, and ten small blocks' worth of numpy calls cost more than the arithmetic).
    out = np.concatenate([runner.infer(runner.inputs(x)) for x, _ in blocks])
    labels = np.concatenate([np.asarray(y, dtype=np.int64) for _, y in blocks])
    correct = int(np.count_nonzero(np.argmax(out, axis=1) == labels))
    if out.min() < 0 or not np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        # Logits (an artifact made elsewhere): cross-entropy through a stable log-softmax.
        shifted = out.astype(np.float64) - out.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return correct, -log_probs[np.arange(len(labels)), labels]
    picked = out[np.arange(len(labels)), labels].astype(np.float64)
    return correct, -np.log(np.clip(picked, 1e-7, 1.0))
