"""A simulated phone's round: its shard, shuffled by (seed, device, round), driven through whatever
runtime its host lends it (restore the global model, train, save). No Ray here; a device that is not
training costs only its shard."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

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
    ) -> TrainResult:
        """restore the global model -> local_epochs of shuffled mini-batches through `train` -> `save` to out.

        instructions: what the strategy and stages told this device (fedsim.core.instructions): the
        labels it trains on, and what its restore and train steps take besides the checkpoint and the
        batch. steps: stop after this many train steps (a straggler's work by the deadline); None: all."""
        # Shuffling depends on (seed, device, round) only, never on which host runs the device.
        rng = shuffle_rng(self.seed, self.device_id, round_num)
        # Shuffled before the clock starts, so train_s counts the device's signature calls and
        # nothing the simulator adds.
        epochs = []
        for _ in range(local_epochs):
            order = rng.permutation(self.samples)
            y = self.y[order]
            for ins in instructions:
                y = ins.labels(y)
            epochs.append((runner.inputs(self.x[order]), runner.labels(y)))
        restore_extras = merged(instructions, "restore_inputs")
        train_extras = merged(instructions, "train_inputs")
        start = time.perf_counter()
        runner.restore(global_checkpoint, restore_extras)
        loss_sum, seen, start_loss = 0.0, 0, float("nan")
        budget = steps if steps is not None else -1
        for xs, ys in epochs:
            for i in range(0, self.samples, batch_size):
                if budget == 0:
                    break
                budget -= 1
                xb, yb = xs[i : i + batch_size], ys[i : i + batch_size]
                loss = runner.train(xb, yb, train_extras)
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
