"""A simulated phone: its round on its own shard (`train`), driven through the on-device runtime its
host lends it (`runtime` picks by the artifact: `tflite`, the artifact's four signatures on a
tf.lite.Interpreter; `executorch`, a .pte training program)."""

from fedsim.device.runtime import RUNTIMES, open_runner, runtime_of
from fedsim.device.tflite import Runner, write_control
from fedsim.device.train import Device, TrainResult, evaluate_counts, shuffle_rng

__all__ = [
    "RUNTIMES",
    "Device",
    "Runner",
    "TrainResult",
    "evaluate_counts",
    "open_runner",
    "runtime_of",
    "shuffle_rng",
    "write_control",
]
