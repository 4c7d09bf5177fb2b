"""The .tflite artifact: the checks a run makes before its first round (`checks`), the report of
`fedsim inspect` (`report`), parity with TensorFlow and the trained model back in Keras (`parity`).
Needs TensorFlow (the interpreter); the coordinator never imports this package."""

from fedsim.artifact.checks import ArtifactError, signature_ops, task_of
from fedsim.artifact.parity import load_model, run_parity
from fedsim.artifact.program import check_artifact
from fedsim.artifact.report import ArtifactReport, inspect

__all__ = [
    "ArtifactError",
    "ArtifactReport",
    "check_artifact",
    "inspect",
    "load_model",
    "run_parity",
    "signature_ops",
    "task_of",
]
