"""The settings of the model and its on-device training: what the artifact is and how `train` learns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedsim.core.settings import ConfigError, Section, need, setting
from fedsim.model.builders import OPTIMIZERS, Optimizer
from fedsim.model.formats import RUNTIMES, SUFFIX
from fedsim.model.signatures import CHECKPOINT_FORMATS


def is_import_path(text: str) -> bool:
    """Whether `text` reads as package.module:function."""
    module, sep, attr = text.partition(":")
    return bool(sep) and all(p.isidentifier() for p in module.split(".") + attr.split("."))


@dataclass(frozen=True)
class DeviceSettings(Section):
    section = "device"
    model: str = setting(
        "mlp",
        "mlp, cnn, logreg, lstm, lstm-small (text), or your Keras builder as package.module:function (it "
        "receives the Task; on --runtime executorch it returns a torch.nn.Module)",
    )
    # passes over its shard a device makes per round, as the guide's train loop does
    local_epochs: int = setting(1, "passes over its shard each device makes per round", least=1)
    # 32: the usual on-device batch
    batch_size: int = setting(32, "mini-batch size of the train signature", least=1)
    lr: float = setting(0.05, "learning rate of the on-device optimiser baked into the artifact", above=0)
    # its state restarts at every device's round and never enters the checkpoint a device uploads
    device_optimizer: str = setting(
        "sgd", "on-device optimiser (state restarts every device round)", choices=OPTIMIZERS
    )
    device_momentum: float = setting(0.9, "momentum of --device-optimizer momentum", least=0, below=1)
    # Adam's decay rates and epsilon (Keras' defaults)
    device_beta1: float = setting(0.9, "Adam's beta1 (--device-optimizer adam)", least=0, below=1)
    device_beta2: float = setting(0.999, "Adam's beta2 (--device-optimizer adam)", least=0, below=1)
    device_epsilon: float = setting(1e-7, "Adam's epsilon (--device-optimizer adam)", above=0)
    # packed: every weight in one tensor, so `restore` is one Restore op, several times cheaper
    checkpoint_format: str = setting(
        "packed",
        "packed (all weights in one tensor: a cheaper restore) or tensors (the guide's, one per weight)",
        choices=CHECKPOINT_FORMATS,
    )
    # the on-device runtime every device runs: TFLite (the guide's .tflite) or ExecuTorch (PyTorch's
    # .pte training program); an --artifact says its own
    runtime: str = setting(
        "tflite",
        "on-device runtime: tflite (a .tflite, needs TensorFlow 2.18) or executorch (a .pte training program "
        "from the PyTorch twin of --model, needs torch and executorch)",
        choices=RUNTIMES,
    )
    # a .tflite or .pte made outside fedsim, run as it is; checked before any round
    artifact: str | None = setting(
        None, "run a .tflite or ExecuTorch .pte made elsewhere as it is (checked before any round)"
    )

    def optimizer(self) -> Optimizer:
        """The on-device optimiser these settings bake into `train`."""
        return Optimizer(
            self.device_optimizer,
            self.lr,
            self.device_momentum,
            self.device_beta1,
            self.device_beta2,
            self.device_epsilon,
        )

    def made_elsewhere(self) -> bytes | None:
        """The --artifact file's bytes (None without one)."""
        if self.artifact is None:
            return None
        try:
            return Path(self.artifact).read_bytes()
        except OSError as e:
            raise ConfigError(f"--artifact {self.artifact}: {e.strerror}") from None

    def check(self) -> None:
        from fedsim.model.builders import MODELS

        need(
            self.model in MODELS or is_import_path(self.model),
            "model",
            f"must be one of {', '.join(sorted(MODELS))} or package.module:function",
            self.model,
        )
        if self.artifact is not None:
            need(
                self.artifact.endswith(tuple(SUFFIX.values())),
                "artifact",
                "must be a .tflite or .pte file",
                self.artifact,
            )
            suffix = SUFFIX[self.runtime]
            need(
                self.artifact.endswith(suffix) or self.runtime == "tflite",
                "artifact",
                f"--runtime {self.runtime} runs {suffix} files",
                self.artifact,
            )
