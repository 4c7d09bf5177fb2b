"""A simulated phone's round: its shard, shuffled by (seed, device, round), driven through whatever
runtime its host lends it (restore the global model, train, save). No Ray here; a device that is not
training costs only its shard."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedsim.checkpoint import WeightSpec, flatten, read_checkpoint_file, spec_of, unflatten, write_checkpoint
from fedsim.core.devicestate import DeviceState
from fedsim.core.instructions import Instruction, merged

if TYPE_CHECKING:
    from fedsim.device.tflite import Runner


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
        instructions: Sequence[Instruction] = (),
        steps: int | None = None,
        state: DeviceState | None = None,
        spec: WeightSpec | None = None,
    ) -> TrainResult:
        """restore the global model -> local_epochs of shuffled mini-batches through `train` -> `save` to out.

        instructions: what the strategy and stages told this device (fedsim.core.instructions): what it
        restores, its training's phases and labels, what its restore and train take besides the
        checkpoint and the batch, and any work after its upload is saved (a personal model's). steps:
        stop after this many train steps (a straggler's work by the deadline); None: all. state: what
        the device keeps across rounds; spec: the layout of the global checkpoint (for instructions that
        write checkpoints of their own)."""
        rnd = DeviceRound(
            runner, self, round_num, batch_size, global_checkpoint, out, state or DeviceState(), spec, steps
        )
        rnd.labels = [ins for ins in instructions if type(ins).labels is not Instruction.labels]
        restore_extras = merged(instructions, "restore_inputs")
        train_extras = merged(instructions, "train_inputs")
        phases: list[tuple[int, dict[str, Any]]] = [(local_epochs, dict(train_extras))]
        for ins in instructions:
            phases = ins.phases(rnd, phases)
        # Shuffled before the clock starts, so train_s counts the device's signature calls and
        # nothing the simulator adds.
        rnd.first_epochs = phases[0][0]
        batches = [(rnd.epochs(epochs), extras) for epochs, extras in phases]
        start_from = global_checkpoint
        for ins in instructions:
            start_from = ins.restore_from(rnd) or start_from
        start = time.perf_counter()
        runner.restore(start_from, restore_extras)
        for epochs, extras in batches:
            rnd.train_epochs(epochs, extras)
        runner.save(out)
        for ins in instructions:  # work after the upload is saved (a personal model's training)
            ins.after_round(rnd)
        train_s = time.perf_counter() - start
        loss = rnd.loss_sum / max(rnd.seen, 1)
        return TrainResult(self.device_id, self.samples, loss, train_s, rnd.start_loss, out)


class DeviceRound:
    """A device's round as the instructions it was given see it: its runtime, data, state and the
    global model, with the steps they may take on the phone (restore, train epochs, save). Shuffling
    depends on (seed, device, round) only, never on which host runs the device; every epoch of the
    round, in whatever phase, draws the next permutation of one generator."""

    def __init__(
        self,
        runner: Any,
        device: Device,
        round_num: int,
        batch_size: int,
        global_path: Path,
        out: Path,
        state: DeviceState,
        spec: WeightSpec | None,
        budget: int | None = None,
    ) -> None:
        self.runner, self.device, self.round_num, self.batch_size = runner, device, round_num, batch_size
        self.global_path, self.out, self.state, self.spec = global_path, out, state, spec
        self.budget = -1 if budget is None else budget  # train steps left (-1: no limit)
        self.labels: list[Instruction] = []  # the instructions that change what it trains on
        self.rng = shuffle_rng(device.seed, device.device_id, round_num)
        self.loss_sum, self.seen, self.start_loss = 0.0, 0, float("nan")
        self.first_epochs = 0  # the epochs of the round's first phase
        self._global: np.ndarray | None = None

    def epochs_again(self, count: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """The round's first `count` epochs again (default: as many as the round's first phase had),
        shuffled as they were: the generator starts over (what a personal model's training sees)."""
        self.rng = shuffle_rng(self.device.seed, self.device.device_id, self.round_num)
        return self.epochs(self.first_epochs if count is None else count)

    def epochs(self, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """`count` epochs of the device's data, shuffled, as its runtime takes them."""
        out = []
        for _ in range(count):
            order = self.rng.permutation(self.device.samples)
            y = self.device.y[order]
            for ins in self.labels:
                y = ins.labels(y)
            out.append((self.runner.inputs(self.device.x[order]), self.runner.labels(y)))
        return out

    def train_epochs(
        self, epochs: list[tuple[np.ndarray, np.ndarray]], extras: Mapping[str, Any], record: bool = True
    ) -> None:
        """Mini-batches through `train` (within the round's step budget), the losses counted (`record`:
        into the round's training loss; a personal model's are not)."""
        n, size = self.device.samples, self.batch_size
        for xs, ys in epochs:
            for i in range(0, n, size):
                if self.budget == 0:
                    return
                self.budget -= 1
                xb, yb = xs[i : i + size], ys[i : i + size]
                loss = self.runner.train(xb, yb, extras)
                if not record:
                    continue
                if not self.seen:
                    self.start_loss = loss
                self.loss_sum += loss * len(yb)
                self.seen += len(yb)

    @property
    def names(self) -> list[tuple[str, tuple[int, ...]]]:
        """(weight name, shape) of every weight, in the order of a flat vector (the artifact's layout)."""
        return list(self.runner.layout)

    def global_flat(self) -> np.ndarray:
        """The global model the device received, as one float32 vector (read once)."""
        if self._global is None:
            self._global = read_flat(self.global_path)
        return self._global

    def write(self, flat: np.ndarray, name: str) -> Path:
        """A checkpoint of `flat` in the global checkpoint's layout, beside the upload (to restore from)."""
        assert self.spec is not None, "instructions that write checkpoints need the global checkpoint's spec"
        path = self.out.with_name(f"{self.out.stem}-{name}.ckpt")
        path.write_bytes(write_checkpoint(unflatten(np.asarray(flat, np.float32), self.spec)))
        return path

    def saved(self) -> np.ndarray:
        """What `save` writes now, as one float32 vector (to a file of its own, the upload left alone)."""
        path = self.out.with_name(f"{self.out.stem}-saved.ckpt")
        self.runner.save(path)
        try:
            return read_flat(path)
        finally:
            path.unlink(missing_ok=True)


def read_flat(path: Path) -> np.ndarray:
    """A checkpoint file's weights as one float32 vector in name order (the artifact's layout)."""
    weights = read_checkpoint_file(path)
    return flatten(weights, spec_of(weights))


def evaluate_counts(
    runner: Runner,
    checkpoint: Path,
    blocks: Sequence[tuple[np.ndarray, np.ndarray]],
    restore: bool = True,
    unscored: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Restore `checkpoint`, run `infer` on each block of (inputs, labels), and return
    ([top-1 correct, top-3 correct, targets scored], per-sample cross-entropy): accuracy counts the
    targets not in `unscored` (a keyboard's out-of-vocabulary and end-of-sentence tokens), the loss
    every target.

    One `infer` call per block: TFLite's matrix kernels may round differently for another batch
    size, so callers keep blocks fixed to get the same numbers however the blocks are spread.
    """
    if restore:
        runner.restore(checkpoint)
    if not blocks:
        return np.zeros(3, np.int64), np.zeros(0)
    # Scored once over all blocks (per sample, so the same as per block; a host evaluates after
    # every round, and ten small blocks' worth of numpy calls cost more than the arithmetic).
    out = np.concatenate([runner.infer(runner.inputs(x)) for x, _ in blocks])
    labels = np.concatenate([np.asarray(y, dtype=np.int64) for _, y in blocks])
    return counts(out, labels, unscored), cross_entropy(out, labels)


def counts(out: np.ndarray, labels: np.ndarray, unscored: Sequence[int] = ()) -> np.ndarray:
    """[top-1 correct, top-3 correct, targets scored] of outputs `out` (one row per sample)."""
    scored = ~np.isin(labels, np.asarray(unscored, np.int64)) if len(unscored) else np.ones(len(labels), bool)
    top1 = np.argmax(out, axis=1) == labels
    if out.shape[1] > 3:  # the label is among the 3 largest outputs (ties: those argpartition picks)
        top3 = (np.argpartition(-out, 3, axis=1)[:, :3] == labels[:, None]).any(axis=1)
    else:
        top3 = np.ones(len(labels), bool)
    return np.array([np.count_nonzero(top1 & scored), np.count_nonzero(top3 & scored), np.count_nonzero(scored)])


def cross_entropy(out: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-sample cross-entropy of probabilities, or of logits (an artifact made elsewhere)."""
    if out.min() < 0 or not np.allclose(out.sum(axis=1), 1.0, atol=1e-3):
        # Logits: cross-entropy through a stable log-softmax.
        shifted = out.astype(np.float64) - out.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -log_probs[np.arange(len(labels)), labels]
    picked = out[np.arange(len(labels)), labels].astype(np.float64)
    return -np.log(np.clip(picked, 1e-7, 1.0))
