"""The ExecuTorch runtime: fedsim's training programs against eager PyTorch, the checkpoint contract,
the one-line refusals of programs it cannot drive, and whole runs on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from executorch.exir import to_edge
from torch.export import Dim, export
from torch.export.experimental import _export_forward_backward

import fedsim
from fedsim.artifact import ArtifactError, check_artifact, inspect
from fedsim.checkpoint import CheckpointError, read_checkpoint_file, write_checkpoint
from fedsim.core.task import Task
from fedsim.device import open_runner, runtime_of
from fedsim.device.executorch import ExecuTorchRunner, ProgramError
from fedsim.model.builders import ArtifactRecipe, ModelError, Optimizer, build_cnn, build_lstm, build_mlp
from fedsim.model.pte import MAX_BATCH, check_recipe, export_pte, torch_model

TASK = Task((28, 28), "image", 10)


@pytest.fixture(scope="module")
def mlp_program() -> bytes:
    return export_pte(ArtifactRecipe(build_mlp, TASK, seed=3))


def eager_twin(recipe: ArtifactRecipe) -> torch.nn.Module:
    """The same seeded model in eager PyTorch (the program's parameters are its, prefixed "net."), with
    PyTorch's own max-pooling where the program pools by reshape and max."""
    model = torch_model(recipe)
    for name in ("pool1", "pool2"):
        if hasattr(model, name):
            setattr(model, name, torch.nn.MaxPool2d(2))
    return model


def batches(n: int, sizes: list[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 256, (s, 28, 28), dtype=np.uint8), rng.integers(0, 10, s).astype(np.int32)) for s in sizes
    ][:n]


@pytest.mark.parametrize(
    ("builder", "optimizer"),
    [
        (build_mlp, Optimizer("sgd", 0.05)),
        (build_mlp, Optimizer("momentum", 0.05, momentum=0.9)),
        (build_cnn, Optimizer("sgd", 0.05)),
    ],
    ids=["mlp-sgd", "mlp-momentum", "cnn-sgd"],
)
def test_training_steps_equal_eager_pytorch(builder, optimizer):
    """20 steps on batches of 32, a shard's short last batch and one above the planned memory (cut and
    summed): the same losses and weights as torch.optim.SGD on the eager model, to ~1e-6."""
    recipe = ArtifactRecipe(builder, TASK, optimizer=optimizer, seed=1)
    runner = open_runner(export_pte(recipe))
    eager = eager_twin(recipe)
    sgd = torch.optim.SGD(
        eager.parameters(), lr=optimizer.lr, momentum=optimizer.momentum if optimizer.name == "momentum" else 0
    )
    sizes = [32] * 17 + [7, MAX_BATCH + 100, 32]
    for x, y in batches(len(sizes), sizes):
        loss = runner.train(runner.inputs(x), runner.labels(y))
        sgd.zero_grad()
        expected = torch.nn.functional.cross_entropy(
            eager(torch.from_numpy(x / np.float32(255))), torch.from_numpy(y).long()
        )
        expected.backward()
        sgd.step()
        assert loss == pytest.approx(expected.item(), abs=1e-5)
    weights = runner.weights()
    for name, value in eager.state_dict().items():
        np.testing.assert_allclose(weights[f"net.{name}"], value.numpy(), atol=2e-6)


def test_save_restore_round_trip_and_the_optimiser_restarts(mlp_program, tmp_path):
    """The run's own check of an artifact passes, and momentum starts afresh at every restore: the
    same two steps after a restore land on the same weights."""
    check_artifact(mlp_program, TASK, *batches(1, [32])[0])
    runner = ExecuTorchRunner(mlp_program)
    assert runner.optimizer == "sgd"
    momentum = open_runner(export_pte(ArtifactRecipe(build_mlp, TASK, Optimizer("momentum", 0.05), seed=3)))
    start = tmp_path / "start.ckpt"
    momentum.save(start)
    x, y = batches(1, [32])[0]
    outcomes = []
    for _ in range(2):
        momentum.restore(start)
        for _ in range(2):
            momentum.train(momentum.inputs(x), momentum.labels(y))
        outcomes.append(momentum.weights())
    for name in outcomes[0]:
        np.testing.assert_array_equal(outcomes[0][name], outcomes[1][name])
        assert not np.array_equal(outcomes[0][name], read_checkpoint_file(start)["fedsim/packed"][:1])


def test_restore_refuses_weights_that_do_not_match_the_program(mlp_program, tmp_path):
    runner = ExecuTorchRunner(mlp_program)
    wrong_names = {name.replace("net.", "other."): np.zeros(shape, np.float32) for name, shape in runner.layout}
    (tmp_path / "names.ckpt").write_bytes(write_checkpoint(wrong_names))
    with pytest.raises(CheckpointError, match="missing net.classifier.bias"):
        runner.restore(tmp_path / "names.ckpt")
    wrong_shape = {name: np.zeros(shape, np.float32) for name, shape in runner.layout}
    wrong_shape["net.hidden.bias"] = np.zeros(3, np.float32)
    (tmp_path / "shape.ckpt").write_bytes(write_checkpoint(wrong_shape))
    with pytest.raises(CheckpointError, match=r"net.hidden.bias is \[3\] in the checkpoint, \[128\] in the program"):
        runner.restore(tmp_path / "shape.ckpt")
    with pytest.raises(ValueError, match="takes no control"):
        runner.restore(tmp_path / "shape.ckpt", {"control": np.zeros(3)})


class _Loss(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x, y):
        return torch.nn.functional.cross_entropy(self.linear(x), y)


class _LossAndLogits(_Loss):
    def forward(self, x, y):
        logits = self.linear(x)
        return torch.nn.functional.cross_entropy(logits, y), logits.detach()


def _program(module, training=True, dynamic=True, constants=True) -> bytes:
    example = (torch.zeros(8, 4), torch.zeros(8, dtype=torch.long))
    batch = Dim("batch", min=1, max=64)
    shapes = ({0: batch}, {0: batch}) if dynamic else None
    ep = export(module, example if training else example[:1], dynamic_shapes=shapes if training else None, strict=True)
    if training:
        ep = _export_forward_backward(ep)
    methods = {"fedsim_optimizer": "sgd", "fedsim_lr": 0.1} if constants else None
    return bytes(to_edge(ep, constant_methods=methods).to_executorch().buffer)


class _Infer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (lambda: _program(_Infer(), training=False), "has no training method"),
        (lambda: _program(_LossAndLogits(), dynamic=False), "takes batches of exactly 8"),
        (lambda: _program(_Loss()), "returns the loss only"),
        (lambda: _program(_LossAndLogits(), constants=False), "names no on-device optimiser"),
        (lambda: b"\0\0\0\0ET12" + b"\0" * 64, "ExecuTorch cannot load it"),
    ],
    ids=["no-training-method", "fixed-batch", "loss-only", "no-optimiser", "corrupt"],
)
def test_programs_it_cannot_drive_are_refused_in_one_line(program, message):
    with pytest.raises(ProgramError, match=message) as e:
        ExecuTorchRunner(program())
    assert "\n" not in str(e.value)


def test_the_runtime_is_told_by_the_artifact_itself(mlp_program):
    assert runtime_of(mlp_program) == "executorch"
    assert runtime_of(b"\x1c\0\0\0TFL3" + bytes(24)) == "tflite"  # a .tflite's flatbuffer identifier
    with pytest.raises(ValueError, match="neither a .tflite"):
        runtime_of(b"not a model at all")


class _PoolingNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.pool = torch.nn.MaxPool2d(2)
        self.head = torch.nn.Linear(2 * 13 * 13, 10)

    def forward(self, x):
        return self.head(self.pool(self.conv(x.unsqueeze(1))).flatten(1))


def pooling_net(task):
    return _PoolingNet()


def test_a_model_whose_gradient_executorch_computes_wrongly_is_refused():
    """nn.MaxPool2d's backward kernel in ExecuTorch 1.5 adds onto stale memory (executorch#21686)."""
    with pytest.raises(ModelError, match=r"max_pool2d_with_indices_backward.*executorch#21686.*max_pool2"):
        export_pte(ArtifactRecipe(pooling_net, TASK))


def test_the_cnn_twin_has_the_keras_cnn_shapes():
    runner = open_runner(export_pte(ArtifactRecipe(build_cnn, TASK)))
    shapes = dict(runner.layout)
    assert shapes["net.conv1.weight"] == (6, 1, 5, 5)
    assert shapes["net.dense1.weight"] == (120, 16 * 4 * 4)
    assert runner.infer(runner.inputs(batches(1, [5])[0][0])).shape == (5, 10)


def test_inspect_reports_a_program_in_the_guides_terms(mlp_program, tmp_path):
    path = tmp_path / "model.pte"
    path.write_bytes(mlp_program)
    report = inspect(path, repeats=3)
    assert report.parameters == 784 * 128 + 128 + 128 * 10 + 10
    assert set(report.latency_ms) == {"train", "infer", "save", "restore"}
    assert all(v > 0 for v in report.latency_ms.values())
    assert Task.from_dict(report.task) == TASK
    checked = inspect(mlp_program, repeats=1, parity=5, recipe=ArtifactRecipe(build_mlp, TASK, seed=3))
    assert len(checked.parity) == 5 and (checked.parity["max_weight_diff"] < 1e-5).all()
    assert "eager PyTorch" in str(checked)
    with pytest.raises(ArtifactError, match="its logits hold 10 classes, but the data has 5"):
        check_artifact(mlp_program, Task((28, 28), "image", 5), *batches(1, [8])[0])


def test_instructions_a_program_cannot_honour_are_refused_before_any_work(tmp_path):
    settings = dict(dataset="toy_images", toy_samples=10, devices=4, rounds=1, progress=False, runtime="executorch")
    with pytest.raises(ModelError, match="honour no instructions beyond the guide's.*proximal"):
        fedsim.run(out=str(tmp_path / "prox"), engine=fedsim.LocalEngine(), strategy="fedprox", **settings)
    with pytest.raises(ModelError, match="offer sgd and momentum only"):
        fedsim.run(out=str(tmp_path / "adam"), engine=fedsim.LocalEngine(), device_optimizer="adam", **settings)
    assert not any((tmp_path / name).exists() for name in ("prox", "adam"))
    text = ArtifactRecipe(build_lstm, Task((10,), "tokens", 5, 5), runtime="executorch")
    with pytest.raises(ModelError, match="--model lstm has no PyTorch twin yet"):
        check_recipe(text)


def test_a_run_on_executorch_learns_records_its_program_and_resumes(tmp_path):
    settings = dict(dataset="toy_images", toy_samples=30, devices=6, seed=4, progress=False, runtime="executorch")
    straight = fedsim.run(out=str(tmp_path / "straight"), engine=fedsim.LocalEngine(2), rounds=3, **settings)
    assert (straight.path / "model.pte").is_file() and not (straight.path / "model.tflite").exists()
    assert straight.final_accuracy > 0.5  # 10 classes: chance is 0.1
    assert "executorch" in straight.meta["versions"] and "torch" in straight.meta["versions"]
    assert straight.artifact["latency_ms"]["train"] > 0  # the clock's latencies come from the program
    short = fedsim.run(out=str(tmp_path / "short"), engine=fedsim.LocalEngine(2), rounds=2, **settings)
    extended = fedsim.resume(short.path, engine=fedsim.LocalEngine(1), rounds=3)
    assert (extended.path / "global.ckpt").read_bytes() == (straight.path / "global.ckpt").read_bytes()


def test_personal_models_and_update_stages_compose_with_executorch(tmp_path):
    """FedPer keeps each device's head (the program's net.classifier.*) on the device, personalised
    evaluation fine-tunes through the program, and a codec compresses its uploads as a .tflite's."""
    settings = dict(
        dataset="toy_images",
        toy_samples=40,
        devices=6,
        rounds=3,
        seed=3,
        partition="classes:2",
        device_test_fraction=0.25,
        progress=False,
        runtime="executorch",
    )
    r = fedsim.run(out=str(tmp_path / "fedper"), engine=fedsim.LocalEngine(2), strategy="fedper", **settings)
    assert r.meta["stages"]["personal"]["personal_layers"] == ["net.classifier.bias", "net.classifier.weight"]
    heads = [r.device_state(d)["personal.layers"] for d in range(6)]
    assert all(h.size == 128 * 10 + 10 for h in heads) and len({h.tobytes() for h in heads}) == 6
    assert r.rounds["personal_acc_mean"].iloc[-1] > r.rounds["global_acc_mean"].iloc[-1]
    plain = fedsim.run(out=str(tmp_path / "plain"), engine=fedsim.LocalEngine(), **settings)
    q8 = fedsim.run(out=str(tmp_path / "q8"), engine=fedsim.LocalEngine(), compress="q8", **settings)
    assert q8.rounds["bytes_up"].iloc[-1] < plain.rounds["bytes_up"].iloc[-1] / 3
    assert abs(q8.final_accuracy - plain.final_accuracy) < 0.1
