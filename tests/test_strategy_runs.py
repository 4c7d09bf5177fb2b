"""The strategy zoo in real runs (in-process hosts, real interpreters): server state across a resume,
FedProx's on-device proximal term, attackers recorded per device."""

import json

import numpy as np
import pytest
from fakes import StopAt

import fedsim
from fedsim.checkpoint import flatten, read_checkpoint, spec_of
from fedsim.engine.host import DeviceHost
from fedsim.engine.layout import ShardData
from fedsim.engine.settings import HostSettings
from fedsim.pipeline import HostRound
from fedsim.pipeline.verify import Verify
from fedsim.results import RunFolderError
from fedsim.strategies import DevicePlan, FedAvg
from fedsim.strategies.fedprox import Proximal

# commit_every: these runs are killed after a round and resumed from it
SETTINGS = dict(dataset="toy_images", toy_samples=20, devices=6, rounds=5, seed=4, progress=False, commit_every="1")
COLUMNS = ["round", "test_accuracy", "test_loss", "train_loss", "devices_accepted", "samples", "bytes_up"]


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm", "scaffold"])
def test_a_stateful_strategy_killed_after_round_3_resumes_to_the_straight_run(tmp_path, strategy):
    settings = {**SETTINGS, "strategy": strategy, "server_lr": 0.05 if strategy != "scaffold" else 1.0}
    straight = fedsim.run(out=str(tmp_path / "straight"), engine=fedsim.LocalEngine(2), **settings)
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAt(4), **settings)
    cut = tmp_path / "cut"
    assert json.loads((cut / "config.json").read_text())["rounds_completed"] == 3
    assert (cut / "resume" / "round-3.server_state.npz").is_file()
    resumed = fedsim.resume(cut, engine=fedsim.LocalEngine(3))
    assert resumed.rounds[COLUMNS].equals(straight.rounds[COLUMNS])
    assert (resumed.path / "global.ckpt").read_bytes() == (straight.path / "global.ckpt").read_bytes()
    state = np.load(resumed.path / "server_state.npz")
    assert set(state.files) == {"fedadam": {"m", "v"}, "fedavgm": {"m"}, "scaffold": {"c", "c_ids", "c_rows"}}[strategy]


def test_a_resume_without_the_server_state_is_refused(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAt(3), strategy="fedadam", **SETTINGS)
    (tmp_path / "cut" / "resume" / "round-2.server_state.npz").unlink()
    with pytest.raises(ValueError, match="saved server state holds nothing, but fedadam keeps"):
        fedsim.resume(tmp_path / "cut", engine=fedsim.LocalEngine(2))


def test_resume_refuses_a_custom_strategy_it_cannot_rebuild(tmp_path):
    class Local(FedAvg):  # defined here: not importable by its recorded module:Class
        accumulate = "stack"

    with pytest.raises(KeyboardInterrupt):
        fedsim.run(out=str(tmp_path / "cut"), engine=StopAt(2), strategy=Local(), **SETTINGS)
    with pytest.raises(RunFolderError, match="used strategy .*Local, which cannot be rebuilt"):
        fedsim.resume(tmp_path / "cut", engine=fedsim.LocalEngine())
    with pytest.raises(RunFolderError, match="used strategy .*Local, not fedavg"):
        fedsim.resume(tmp_path / "cut", engine=fedsim.LocalEngine(), strategy=FedAvg())
    resumed = fedsim.resume(tmp_path / "cut", engine=fedsim.LocalEngine(), strategy=Local())
    assert resumed.meta["rounds_completed"] == SETTINGS["rounds"]


def test_fedprox_with_mu_0_equals_fedavg_exactly(tmp_path):
    base = {**SETTINGS, "rounds": 2}
    fedavg = fedsim.run(out=str(tmp_path / "avg"), engine=fedsim.LocalEngine(2), **base)
    prox = fedsim.run(out=str(tmp_path / "prox"), engine=fedsim.LocalEngine(2), strategy="fedprox", mu=0.0, **base)
    assert prox.rounds[COLUMNS].equals(fedavg.rounds[COLUMNS])
    assert (prox.path / "global.ckpt").read_bytes() == (fedavg.path / "global.ckpt").read_bytes()
    # mu is FedProx's column: recorded where its instruction was given, absent elsewhere
    assert (prox.devices["mu"] == 0.0).all() and "mu" not in fedavg.devices
    # the artifact carries the proximal term as an input of train (what fedsim inspect shows)
    assert "mu" in [i["name"] for i in prox.artifact["signatures"]["train"]["inputs"]]


def test_a_large_mu_keeps_local_weights_closer_to_the_global_ones(toy):
    from fedsim.core.task import Task
    from fedsim.model import cache
    from fedsim.model.builders import ArtifactRecipe, Optimizer

    artifact = cache.build(
        ArtifactRecipe(task=Task((28, 28), "image", 10), optimizer=Optimizer(lr=0.1), variant="fedprox")
    )
    settings = HostSettings(local_epochs=3, batch_size=8, seed=0)
    host = DeviceHost(
        0, ShardData(toy.x_train[:60], toy.y_train[:60], np.array([(0, 60, 60)])), settings, artifact=artifact
    )
    try:
        initial = host.initial_checkpoint()
        spec = spec_of(read_checkpoint(initial, host.scratch))
        g = flatten(read_checkpoint(initial, host.scratch), spec).astype(np.float64)

        def distance(mu):
            plan = {0: DevicePlan().given(Proximal(mu))}
            (p,) = host.run_round(1, initial, [0], HostRound(1, spec, (Verify(),), "stack", plans=plan)).partials
            return float(np.linalg.norm(p.rows[0] - g))

        free, held = distance(0.0), distance(5.0)
        assert held < 0.8 * free, (free, held)
    finally:
        host.close()


def test_attackers_are_recorded_by_role(tmp_path):
    run = fedsim.run(
        out=str(tmp_path / "a"),
        engine=fedsim.LocalEngine(2),
        byzantine=0.34,
        attack="signflip",
        **{**SETTINGS, "rounds": 2},
    )
    roles = run.devices.groupby("role")["device_id"].nunique().to_dict()
    assert roles == {"honest": 4, "signflip": 2}
    assert run.config["attack"] == "signflip"


def test_scaffold_artifact_adds_the_correction_to_every_gradient(toy, artifact, tmp_path):
    """One step on one batch: the scaffold artifact with a zero correction trains exactly as the plain
    one; with correction k it lands at plain - lr * k (the step is w - lr * (g + k))."""
    from fedsim.checkpoint import read_checkpoint_file
    from fedsim.core.task import Task
    from fedsim.device import Device, Runner
    from fedsim.model import cache
    from fedsim.model.builders import ArtifactRecipe
    from fedsim.strategies.scaffold import Control

    scaffold = Runner(cache.build(ArtifactRecipe(task=Task((28, 28), "image", 10), variant="scaffold")))
    plain = Runner(artifact)
    assert scaffold.takes_control and not plain.takes_control
    g = tmp_path / "g.ckpt"
    g.write_bytes(plain.initial_checkpoint(tmp_path))
    device = Device(0, toy.x_train[:8], toy.y_train[:8], seed=0)

    def trained(runner, control=None):
        out = tmp_path / "out.ckpt"
        device.run_round(runner, g, 1, 1, 8, out, () if control is None else (Control(control),))
        (flat,) = read_checkpoint_file(out).values()
        return flat.astype(np.float64)

    base = trained(plain)
    size = base.size
    np.testing.assert_array_equal(trained(scaffold), base)  # the Runner's own zero control file
    k = np.linspace(-1, 1, size).astype(np.float32)
    np.testing.assert_allclose(trained(scaffold, k), base - 0.05 * k, atol=1e-6)
    with pytest.raises(ValueError, match="restore takes no control file"):
        trained(plain, k)  # an artifact that cannot honour the instruction says so
