"""The anchor protocol on Apple's pfl-research 0.6 (the peer fedsim is closest to), for side-by-side timing.

Runs in its own environment, never fedsim's (pfl pins its own TensorFlow and Keras):

    python -m venv .venv-pfl
    .venv-pfl/bin/pip install "pfl[tf]==0.6.0" tf_keras==2.18.0 tensorflow==2.18.1
    .venv-pfl/bin/python experiments/peers/pfl_anchor.py --devices 100 --rounds 5 --out pfl-100.json

The protocol (the same as fedsim's side in experiments/bench_peers.py): Fashion-MNIST from the Debian
package (IID, equal shards), every device every round, 1 local epoch, batch 32, SGD lr 0.05, FedAvg
(central SGD lr 1.0), the seed MLP (Flatten -> Dense(128, relu) -> Dense(10, softmax)), the global
model evaluated on the 10,000 test images after every round, 2 worker processes (pfl's TF backend
with tf_keras: TF_USE_LEGACY_KERAS=1, since pfl keys variables by name and under Keras 3 the two
Dense layers' kernel/bias collapse into two tensors silently).

The launcher starts the workers (PFL_WORKER_ADDRESSES / PFL_WORKER_RANK, pfl's own multi-worker
mechanism) and writes one JSON object: seconds from the launch to the start of round 1 (imports and
setup), the import and setup parts, each round's wall time, and the final test accuracy.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

DATA = Path("/usr/share/datasets/fashion-mnist")


def _idx(path: Path):  # type: ignore[no-untyped-def]
    import numpy as np

    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def worker(args: argparse.Namespace, launched: float) -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    began = time.time()
    import numpy as np
    import tensorflow as tf

    # pfl's TF backend starts its distribution strategy when imported: the workers meet here
    from pfl.aggregate.simulate import SimulatedBackend
    from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
    from pfl.callback.base import TrainingProcessCallback
    from pfl.callback.central_evaluation import CentralEvaluationCallback
    from pfl.data.dataset import Dataset
    from pfl.data.federated_dataset import FederatedDataset
    from pfl.data.sampling import get_user_sampler
    from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
    from pfl.metrics import Metrics
    from pfl.model.tensorflow import TFModel

    imported = time.time()
    tf.keras.utils.set_random_seed(args.seed)
    x = (_idx(DATA / "train-images-idx3-ubyte.gz").astype(np.float32) / 255.0).reshape(-1, 28, 28)
    y = _idx(DATA / "train-labels-idx1-ubyte.gz").astype(np.int64)
    tx = (_idx(DATA / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0).reshape(-1, 28, 28)
    ty = _idx(DATA / "t10k-labels-idx1-ubyte.gz").astype(np.int64)
    order = np.random.default_rng(args.seed).permutation(len(x))
    shards = np.array_split(order, args.devices)  # IID, equal shards

    def make_user(user_id: int) -> Dataset:
        rows = shards[user_id]
        return Dataset(raw_data=[x[rows], y[rows]], user_id=user_id)

    training = FederatedDataset(make_user, get_user_sampler("minimize_reuse", list(range(args.devices))))
    central = Dataset(raw_data=[tx, ty])

    keras_model = tf.keras.Sequential(
        [
            tf.keras.layers.Flatten(input_shape=(28, 28)),
            tf.keras.layers.Dense(128, activation="relu"),
            tf.keras.layers.Dense(10, activation="softmax"),
        ]
    )
    keras_model.compile(
        loss=tf.keras.losses.SparseCategoricalCrossentropy(), optimizer=tf.keras.optimizers.SGD(args.lr)
    )
    model = TFModel(
        model=keras_model,
        metrics={"accuracy": tf.keras.metrics.SparseCategoricalAccuracy()},
        central_optimizer=tf.keras.optimizers.SGD(1.0),
    )
    backend = SimulatedBackend(training_data=training, val_data=None)

    began_training: list[float] = []
    marks: list[float] = []
    accuracy: list[float] = []

    class Begin(TrainingProcessCallback):  # type: ignore[misc]
        """First in line: the moment training begins, before pfl's evaluation of the initial model."""

        def on_train_begin(self, *, model):  # type: ignore[no-untyped-def]
            began_training.append(time.time())
            return Metrics()

    class Evaluate(CentralEvaluationCallback):  # type: ignore[misc]
        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):  # type: ignore[no-untyped-def]
            stop, metrics = super().after_central_iteration(
                aggregate_metrics, model, central_iteration=central_iteration
            )
            for name, value in metrics:
                if "accuracy" in str(name):
                    accuracy.append(float(getattr(value, "overall_value", value)))
            return stop, metrics

    class Clock(TrainingProcessCallback):  # type: ignore[misc]
        """Last in line: each round ends after its evaluation, as fedsim's does."""

        def on_train_begin(self, *, model):  # type: ignore[no-untyped-def]
            marks.append(time.time())
            return Metrics()

        def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):  # type: ignore[no-untyped-def]
            marks.append(time.time())
            return False, Metrics()

    setup_done = time.time()
    FederatedAveraging().run(
        algorithm_params=NNAlgorithmParams(
            central_num_iterations=args.rounds,
            evaluation_frequency=1,
            train_cohort_size=args.devices,
            val_cohort_size=0,
        ),
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=args.lr, local_num_epochs=1, local_batch_size=args.batch_size
        ),
        model_eval_params=NNEvalHyperParams(local_batch_size=1000),
        callbacks=[Begin(), Evaluate(central, NNEvalHyperParams(local_batch_size=1000), frequency=1), Clock()],
    )
    if os.environ.get("PFL_WORKER_RANK", "0") == "0":
        print(
            "RESULT"
            + json.dumps(
                {
                    "peer": "pfl-research",
                    "devices": args.devices,
                    "workers": args.workers,
                    "import_s": imported - began,
                    "setup_s": setup_done - imported,
                    # the launch to the start of training: processes, imports, data, model (pfl's
                    # evaluation of the initial model, which fedsim does not make, left out)
                    "to_round_1_s": began_training[0] - launched,
                    "round_s": [b - a for a, b in itertools.pairwise(marks)],
                    "accuracy": accuracy[-1] if accuracy else None,
                }
            ),
            flush=True,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the JSON result here too")
    parser.add_argument("--launched", type=float, help=argparse.SUPPRESS)  # the launcher's clock, for workers
    args = parser.parse_args()
    if args.launched is not None:
        worker(args, args.launched)
        return
    launched = time.time()
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    if args.workers > 1:
        env["PFL_WORKER_ADDRESSES"] = ",".join(f"localhost:{_free_port()}" for _ in range(args.workers))
    procs = []
    for rank in range(args.workers):
        child_env = dict(env, PFL_WORKER_RANK=str(rank)) if args.workers > 1 else env
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, *sys.argv[1:], "--launched", repr(launched)],
                env=child_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate() for p in procs]
    failed = [(rank, err) for rank, (p, (_, err)) in enumerate(zip(procs, outputs)) if p.returncode != 0]
    if failed:
        raise SystemExit(f"pfl worker {failed[0][0]} failed:\n{failed[0][1][-3000:]}")
    line = next(x for x in outputs[0][0].splitlines() if x.startswith("RESULT"))
    print(line[len("RESULT") :])
    if args.out:
        Path(args.out).write_text(line[len("RESULT") :] + "\n")


if __name__ == "__main__":
    main()
