"""PyTorch model -> the ExecuTorch training program (.pte) a phone would ship.

The program's training method is the joint forward/backward graph (torch.export, then
`_export_forward_backward`) of the model and its cross-entropy: `forward(x, y) -> (loss, logits,
gradients..., parameters...)`. It takes a dynamic batch dimension (a shard's last batch is smaller
than the rest); memory is planned for MAX_BATCH samples and the runtime cuts larger batches. The
on-device optimiser's settings ride along as constant methods, as a .tflite bakes its optimiser into
`train`: the program says how it learns, whatever runs it. Images go in as uint8 pixels, scaled in
the program, as fedsim's .tflite takes them.

Needs torch and executorch (`pip install -e ".[executorch]"`); imported only where a program is made.
"""

from __future__ import annotations

import warnings
from typing import Any

from fedsim.core.task import Task
from fedsim.model.builders import MODELS, ArtifactRecipe, ModelError, builder_name, call_builder
from fedsim.model.tflog import quiet_native_stderr

TRAIN_METHOD = "forward"  # the name ExecuTorch's training module looks for by default
# The largest batch the program's memory is planned for: every input and activation buffer is sized
# for it, so a program planned for 65,536 samples holds ~400 MB per runtime; larger batches (a
# FedSGD device's whole shard, an evaluation block) are cut and their gradients summed.
MAX_BATCH = 512
OPTIMIZER = "fedsim_optimizer"  # constant methods: the on-device optimiser's name ("sgd" | "momentum"),
LR = "fedsim_lr"  # learning rate
MOMENTUM = "fedsim_momentum"  # and momentum (0 for sgd)
CHECKPOINT_FORMAT = "fedsim_checkpoint_format"  # how `save` lays out the checkpoint: "packed" | "tensors"
# What ExecuTorch's Python bindings provide (executorch.extension.training.get_sgd_optimizer): SGD,
# with momentum. Adam is not among them.
EXECUTORCH_OPTIMIZERS = ("sgd", "momentum")


def need_torch() -> None:
    """ModelError in one line when the ExecuTorch runtime's packages are missing."""
    try:
        import executorch  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise ModelError(
            f"--runtime executorch needs torch and executorch ({e.name} is not installed): "
            'pip install -e ".[executorch]" (make install does)'
        ) from None


def need_tensorflow() -> None:
    """ModelError in one line when the TFLite runtime's TensorFlow is missing."""
    from importlib.util import find_spec

    if find_spec("tensorflow") is None:
        raise ModelError(
            'the TFLite runtime needs TensorFlow 2.18, which is not installed: pip install -e ".[tflite]" '
            "(Python 3.11 or 3.12; make install does), or run the devices on --runtime executorch"
        )


def twin_of(recipe: ArtifactRecipe) -> str | None:
    """The built-in model whose PyTorch twin the recipe names (None: a user's builder); ModelError for a
    built-in without one."""
    from fedsim.model.torch_models import TORCH_MODELS

    name = next((n for n, b in MODELS.items() if b is recipe.builder), None)
    if name is not None and name not in TORCH_MODELS:
        raise ModelError(
            f"--model {name} has no PyTorch twin yet (built in: {', '.join(sorted(TORCH_MODELS))}); "
            "use --runtime tflite or --model package.module:function returning an nn.Module"
        )
    return name


def torch_model(recipe: ArtifactRecipe) -> Any:
    """The recipe's seeded nn.Module: a built-in model's PyTorch twin, or what the user's builder returns."""
    import torch

    from fedsim.model.torch_models import TORCH_MODELS

    name = twin_of(recipe)
    with torch.random.fork_rng():
        torch.manual_seed(recipe.seed)
        if name is not None:
            model = TORCH_MODELS[name](recipe.task)
        else:
            model = call_builder(recipe.builder, recipe.task)
    if not isinstance(model, torch.nn.Module):
        raise ModelError(
            f"the model builder {builder_name(recipe.builder)} returned {type(model).__name__}; "
            "--runtime executorch needs a torch.nn.Module"
        )
    return model


def check_recipe(recipe: ArtifactRecipe | bytes) -> None:
    """One line for a runtime the artifact needs and this environment lacks, and for what an
    ExecuTorch program of the recipe could not honour, before any export."""
    from fedsim.model.formats import runtime_of

    try:
        runtime = runtime_of(recipe) if isinstance(recipe, bytes) else recipe.runtime
    except ValueError as e:
        raise ModelError(f"the artifact is {e}") from None
    if runtime == "tflite":
        need_tensorflow()
    elif isinstance(recipe, bytes):
        need_torch()
    else:
        check_program_recipe(recipe)


def check_program_recipe(recipe: ArtifactRecipe) -> None:
    """What an ExecuTorch program of the recipe could not honour (or a missing package), in one line."""
    need_torch()
    twin_of(recipe)
    if recipe.variant:
        raise ModelError(
            f"--runtime executorch: fedsim's training programs honour no instructions beyond the guide's yet "
            f"(this run needs the {recipe.variant} variant: FedProx's proximal term, SCAFFOLD's correction, "
            "Ditto's anchor or FedRep's mask); use --runtime tflite for this strategy"
        )
    if recipe.optimizer.name not in EXECUTORCH_OPTIMIZERS:
        raise ModelError(
            f"--device-optimizer {recipe.optimizer.name}: ExecuTorch's bindings offer "
            f"{' and '.join(EXECUTORCH_OPTIMIZERS)} only; use --runtime tflite for {recipe.optimizer.name}"
        )


# Backward kernels of ExecuTorch releases fedsim supports that compute wrong gradients, with the fix.
BROKEN_KERNELS = {
    "max_pool2d_with_indices_backward": (
        "ExecuTorch 1.5's max-pooling gradient adds into memory it never zeroes (pytorch/executorch#21686), "
        "so the layers before it train on stale bytes: pool with fedsim.model.torch_models.max_pool2 "
        "(what the built-in cnn does)"
    ),
}


def check_kernels(program: Any) -> None:
    """ModelError naming a layer whose gradient an ExecuTorch kernel computes wrongly."""
    for node in program.graph.nodes:
        name = str(getattr(node, "target", ""))
        for kernel, why in BROKEN_KERNELS.items():
            if kernel in name:
                raise ModelError(f"the model's training program needs {kernel}: {why}")


def example_batch(task: Task, n: int = 2) -> tuple[Any, Any]:
    """n zero samples as the program takes them (the data's compact dtype: uint8 pixels, float32
    features, int32 tokens; int64 class ids)."""
    import torch

    dtype = {"image": torch.uint8, "tokens": torch.int32}.get(task.kind, torch.float32)
    return torch.zeros((n, *task.input_shape), dtype=dtype), torch.zeros(n, dtype=torch.int64)


def export_pte(recipe: ArtifactRecipe) -> bytes:
    """The recipe's training program as .pte bytes (whatever runtime the recipe names)."""
    check_program_recipe(recipe)
    model = torch_model(recipe)
    import torch
    from torch.export import Dim, export
    from torch.export.experimental import _export_forward_backward

    class Training(torch.nn.Module):
        """The model and its loss: ExecuTorch trains a method whose first output is the loss; the
        logits come second, so evaluation runs the same program."""

        def __init__(self, net: torch.nn.Module, pixels: bool) -> None:
            super().__init__()
            self.net, self.pixels = net, pixels

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # pixels arrive as uint8 and are scaled here, as in fedsim's .tflite: a quarter of the bytes
            # per batch, and the model sees [0, 1] as the Keras one does
            logits = self.net(x.to(torch.float32) / 255.0 if self.pixels else x)
            return torch.nn.functional.cross_entropy(logits, y), logits.detach()

    batch = Dim("batch", min=1, max=MAX_BATCH)
    with warnings.catch_warnings(), quiet_native_stderr():
        warnings.simplefilter("ignore")  # the training APIs warn that they are experimental, at every call
        from executorch.exir import to_edge

        try:
            program = export(
                Training(model, recipe.task.kind == "image"),
                example_batch(recipe.task),
                dynamic_shapes=({0: batch}, {0: batch}),
                strict=True,
            )
            program = _export_forward_backward(program)
        except Exception as e:  # torch.export's own message names the unsupported construct
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ModelError(f"torch.export cannot make a training program of the model: {first}") from None
        check_kernels(program)
        constants = {
            OPTIMIZER: recipe.optimizer.name,
            LR: float(recipe.optimizer.lr),
            MOMENTUM: float(recipe.optimizer.momentum) if recipe.optimizer.name == "momentum" else 0.0,
            CHECKPOINT_FORMAT: recipe.checkpoint_format,
        }
        return bytes(to_edge(program, constant_methods=constants).to_executorch().buffer)
