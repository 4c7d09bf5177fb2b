"""A simulated phone: its round on its own shard (`train`), driven through the on-device runtime its
host lends it (`tflite`: the artifact's four signatures on a tf.lite.Interpreter)."""

from fedsim.device.tflite import Runner, write_control
from fedsim.device.train import Device, TrainResult, evaluate_counts, shuffle_rng

__all__ = ["Device", "Runner", "TrainResult", "evaluate_counts", "shuffle_rng", "write_control"]
