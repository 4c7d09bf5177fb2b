import numpy as np

from fedsim.checkpoint import read_checkpoint
from fedsim.device import Device, Evaluator, Runner
from fedsim.engine.base import HostSettings
from fedsim.engine.host import DeviceHost


def make_device(ds, device_id=3, n=50):
    return Device(device_id, ds.x_train[:n], ds.y_train[:n], seed=0)


def test_a_device_round_restores_trains_and_saves(artifact, synthetic, shm_scratch):
    runner = Runner(artifact)
    global_path = shm_scratch / "global.ckpt"
    global_path.write_bytes(runner.initial_checkpoint(shm_scratch))
    update = make_device(synthetic).run_round(runner, global_path, 1, local_epochs=2, batch_size=16, scratch=shm_scratch)
    assert update.samples == 50 and update.device_id == 3
    assert np.isfinite(update.train_loss) and update.train_s > 0
    initial = read_checkpoint(global_path.read_bytes(), shm_scratch)
    trained = read_checkpoint(update.checkpoint, shm_scratch)
    assert set(trained) == set(initial)
    assert any(not np.array_equal(trained[k], initial[k]) for k in initial)
    assert not list(shm_scratch.glob("device-*.ckpt"))  # the device's export is not left behind


def test_a_round_depends_on_device_and_round_not_on_the_interpreter(artifact, synthetic, shm_scratch):
    """Hosts reuse one interpreter across devices: the result must not depend on which one or what ran before."""
    r1, r2 = Runner(artifact), Runner(artifact)
    g = shm_scratch / "g.ckpt"
    g.write_bytes(r1.initial_checkpoint(shm_scratch))
    dev = make_device(synthetic)
    other = Device(9, synthetic.x_train[50:90], synthetic.y_train[50:90], seed=0)
    other.run_round(r2, g, 1, 1, 8, shm_scratch)  # r2 has trained another device first
    a = dev.run_round(r1, g, 1, 1, 8, shm_scratch)
    b = dev.run_round(r2, g, 1, 1, 8, shm_scratch)
    c = dev.run_round(r1, g, 2, 1, 8, shm_scratch)
    assert a.checkpoint == b.checkpoint
    assert a.checkpoint != c.checkpoint  # another round shuffles differently


def test_evaluator_scores_through_infer(artifact, synthetic, shm_scratch):
    runner = Runner(artifact)
    evaluate = Evaluator(runner, synthetic.x_test, synthetic.y_test, shm_scratch)
    accuracy, loss = evaluate(runner.initial_checkpoint(shm_scratch))
    assert 0.0 <= accuracy <= 0.3  # an untrained 10-class model is near chance
    assert 1.5 < loss < 4.0  # near -log(1/10) = 2.30


def test_host_reports_a_failing_device_without_stopping_the_others(artifact, synthetic):
    settings = HostSettings(local_epochs=1, batch_size=8, seed=0)
    host = DeviceHost(0, artifact, synthetic.x_train, synthetic.y_train, [(0, np.arange(20)), (2, np.arange(20, 40))], settings)
    try:
        initial = host.runner.initial_checkpoint(host.scratch)
        reports = host.run_round(1, initial, [0, 7, 2])
        assert [r.device_id for r in reports] == [0, 7, 2]
        assert [r.status for r in reports] == ["ok", "failed", "ok"]
        assert "device 7 is not on host 0" in reports[1].error
        bad = host.run_round(2, b"not a checkpoint", [0])
        assert bad[0].status == "failed" and bad[0].error
    finally:
        host.close()
    assert not host.scratch.exists()
