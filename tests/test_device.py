import dataclasses

import numpy as np
import pytest

from fedsim.checkpoint import flatten, read_checkpoint, read_checkpoint_file, spec_of
from fedsim.device import Device, Runner, evaluate_counts, shuffle_rng
from fedsim.engine.host import DeviceHost
from fedsim.engine.layout import ShardData
from fedsim.engine.settings import HostSettings
from fedsim.pipeline import HostRound
from fedsim.pipeline.attack import Attack
from fedsim.pipeline.attacks.labelflip import FlipLabels
from fedsim.pipeline.screen import Screen
from fedsim.pipeline.verify import Verify
from fedsim.strategies import DevicePlan, reduce_partials


def make_device(ds, device_id=3, n=50):
    return Device(device_id, ds.x_train[:n], ds.y_train[:n], seed=0)


def test_a_device_round_restores_trains_and_saves(artifact, toy, shm_scratch):
    runner = Runner(artifact)
    global_path = shm_scratch / "global.ckpt"
    global_path.write_bytes(runner.initial_checkpoint(shm_scratch))
    out = shm_scratch / "d.ckpt"
    update = make_device(toy).run_round(runner, global_path, 1, local_epochs=2, batch_size=16, out=out)
    assert update.samples == 50 and update.device_id == 3 and update.checkpoint_path == out
    assert np.isfinite(update.train_loss) and update.train_s > 0
    initial = read_checkpoint(global_path.read_bytes(), shm_scratch)
    trained = read_checkpoint_file(out)
    assert set(trained) == set(initial)
    assert any(not np.array_equal(trained[k], initial[k]) for k in initial)


def test_a_round_depends_on_device_and_round_not_on_the_interpreter(artifact, toy, shm_scratch):
    """Hosts reuse one interpreter across devices: the result must not depend on which one or what ran before."""
    r1, r2 = Runner(artifact), Runner(artifact)
    g = shm_scratch / "g.ckpt"
    g.write_bytes(r1.initial_checkpoint(shm_scratch))
    dev = make_device(toy)
    other = Device(9, toy.x_train[50:90], toy.y_train[50:90], seed=0)

    def bytes_of(runner, device, round_num):
        out = shm_scratch / "x.ckpt"
        device.run_round(runner, g, round_num, 1, 8, out)
        return out.read_bytes()

    bytes_of(r2, other, 1)  # r2 has trained another device first
    a, b, c = bytes_of(r1, dev, 1), bytes_of(r2, dev, 1), bytes_of(r1, dev, 2)
    assert a == b
    assert a != c  # another round shuffles differently


def test_shuffling_is_keyed_by_seed_device_and_round_only():
    """One generator per thread is re-keyed for every device: what came before must not leak in."""
    first = shuffle_rng(0, 7, 3).permutation(100)
    shuffle_rng(1, 2, 9).permutation(37)  # another device's draw in between
    g = shuffle_rng(0, 7, 3)
    assert np.array_equal(g.permutation(100), first)
    second_epoch = g.permutation(100)
    assert not np.array_equal(second_epoch, first)  # the stream continues across local epochs
    # the documented keying: Philox with key (seed, device << 32 | round)
    reference = np.random.Generator(np.random.Philox(key=np.array([0, 7 << 32 | 3], dtype=np.uint64)))
    assert np.array_equal(reference.permutation(100), first)
    others = [shuffle_rng(s, d, r).permutation(100) for s, d, r in ((1, 7, 3), (0, 8, 3), (0, 7, 4))]
    assert all(not np.array_equal(o, first) for o in others)


def test_evaluation_scores_through_infer_in_chunks(artifact, toy, shm_scratch):
    runner = Runner(artifact)
    path = shm_scratch / "init.ckpt"
    path.write_bytes(runner.initial_checkpoint(shm_scratch))
    n = len(toy.y_test)
    x, y = toy.x_test, toy.y_test
    scores, losses = evaluate_counts(runner, path, [(x, y)])
    top1, top3, scored = scores.tolist()
    assert 0 <= top1 <= 0.3 * n and losses.shape == (n,)  # an untrained 10-class model is near chance
    assert top1 <= top3 and scored == n
    assert 1.5 < losses.mean() < 4.0  # near -log(1/10) = 2.30
    scores2, losses2 = evaluate_counts(runner, path, [(x[:7], y[:7]), (x[7:], y[7:])])
    np.testing.assert_array_equal(scores2, scores)
    np.testing.assert_allclose(losses2, losses, rtol=1e-5)


@pytest.fixture
def host(artifact, toy):
    """A host of a fleet with devices 0 (20 samples), 1 (none) and 2 (30 samples); closed after the test."""
    settings = HostSettings(local_epochs=1, batch_size=8, seed=0)
    data = ShardData(toy.x_train[:50], toy.y_train[:50], np.array([(0, 20, 20), (20, 20, 20), (20, 50, 50)]))
    host = DeviceHost(0, data, settings, artifact=artifact)
    yield host
    host.close()


def pipeline(host, initial, accumulate="stack", **screen):
    """A round's work for the host: check each upload (and screen it), keeping every upload's vector
    by default; coefficients are the devices' samples (FedAvg's)."""
    spec = spec_of(read_checkpoint(initial, host.scratch))
    stages = (Verify(), Screen(**screen)) if screen else (Verify(),)
    return HostRound(1, spec, stages, accumulate)


def uploads(host, initial, ids, round_num=1):
    """Each device's upload as one vector (what a stacking strategy sees)."""
    (p,) = host.run_round(round_num, initial, ids, pipeline(host, initial)).partials
    return {d: row for d, row in zip(p.device_ids.tolist(), p.rows)}


def test_host_reports_a_failing_device_without_stopping_the_others(host):
    initial = host.initial_checkpoint()
    result = host.run_round(1, initial, [0, 7, 2], pipeline(host, initial))
    reports = result.reports
    assert [r.device_id for r in reports] == [0, 7, 2]
    assert [r.status for r in reports] == ["ok", "failed", "ok"]
    assert "device 7 is not in the fleet of 3 devices" in reports[1].error
    assert reports[0].checkpoint_bytes > 0
    (partial,) = result.partials
    assert partial.device_ids.tolist() == [0, 2] and partial.samples.tolist() == [20, 30]
    assert np.all(np.isfinite(partial.start_losses))  # the first batch's loss at the global model
    bad = host.run_round(2, b"not a checkpoint", [0], pipeline(host, initial)).reports
    assert bad[0].status == "failed" and bad[0].error
    assert not list(host.scratch.iterdir())  # no checkpoint files left behind
    host.close()
    assert not host.scratch.exists()


def test_host_running_sum_equals_fedavg_of_the_devices_uploads(host):
    initial = host.initial_checkpoint()
    rows = uploads(host, initial, [0, 2])
    summed = host.run_round(1, initial, [0, 2], pipeline(host, initial, "sum"))
    assert all(r.status == "ok" for r in summed.reports)
    (partial,) = summed.partials
    assert partial.count == 2 and partial.total_weight == 50.0 and partial.rows is None
    expected = (20 * rows[0].astype(np.float64) + 30 * rows[2].astype(np.float64)) / 50
    np.testing.assert_allclose(reduce_partials(summed.partials).mean(), expected, rtol=1e-12, atol=1e-12)


def test_host_rejects_a_checkpoint_that_does_not_match_the_model(host):
    initial = host.initial_checkpoint()
    spec = {k: v for k, v in spec_of(read_checkpoint(initial, host.scratch)).items()}
    first = sorted(spec)[0]
    spec[first] = ((3,), "float32")  # the host's model now disagrees with the spec
    result = host.run_round(1, initial, [0], HostRound(1, spec, (Verify(),)))
    (report,) = result.reports
    assert report.status == "rejected" and f"{first} is float32" in report.error
    assert result.partials == []


def test_host_rejects_or_clips_outsized_updates(host):
    initial = host.initial_checkpoint()
    g = flatten(read_checkpoint(initial, host.scratch), pipeline(host, initial).spec).astype(np.float64)
    rows = uploads(host, initial, [0, 2])
    norms = [float(np.linalg.norm(rows[d] - g)) for d in (0, 2)]
    bound = (norms[0] + norms[1]) / 2 if norms[0] != norms[1] else norms[0] / 2
    rejected = host.run_round(1, initial, [0, 2], pipeline(host, initial, "sum", max_norm=bound))
    statuses = {r.device_id: (r.status, r.error) for r in rejected.reports}
    over = [d for d, n in zip([0, 2], norms) if n > bound]
    assert over and all(statuses[d][0] == "rejected" and "exceeds --max-update-norm" in statuses[d][1] for d in over)
    assert sum(p.count for p in rejected.partials) == 2 - len(over)

    clip = min(norms) / 2
    clipped = host.run_round(1, initial, [0, 2], pipeline(host, initial, "sum", clip_norm=clip))
    assert all(r.status == "ok" and r.error.startswith("clipped: update norm") for r in clipped.reports)
    mean = reduce_partials(clipped.partials).mean()
    assert np.linalg.norm(mean - g) <= clip * (1 + 1e-5)  # an average of updates of norm <= clip


def test_attackers_uploads_are_rewritten_on_the_host(host):
    initial = host.initial_checkpoint()
    g = flatten(read_checkpoint(initial, host.scratch), pipeline(host, initial).spec).astype(np.float64)
    honest = uploads(host, initial, [0, 2])
    base = pipeline(host, initial)
    attacked = dataclasses.replace(
        base, stages=(*base.stages, Attack("signflip").for_host()), plans={2: DevicePlan(role="signflip")}
    )
    (p,) = host.run_round(1, initial, [0, 2], attacked).partials
    np.testing.assert_array_equal(p.rows[0], honest[0])  # device 0 is honest
    np.testing.assert_allclose(p.rows[1], g - 4 * (honest[2] - g), rtol=1e-5, atol=1e-6)
    flipping = dataclasses.replace(base, plans={2: DevicePlan(role="labelflip").given(FlipLabels(10))})
    (p,) = host.run_round(1, initial, [2], flipping).partials
    assert not np.array_equal(p.rows[0], honest[2])  # trained on other labels


@pytest.fixture
def host3(artifact, toy):
    """A host of a fleet with devices 0 (20 samples), 2 (30) and 4 (40); closed after the test."""
    settings = HostSettings(local_epochs=1, batch_size=8, seed=0)
    bounds = np.array([(0, 20, 20), (20, 20, 20), (20, 50, 50), (50, 50, 50), (50, 90, 90)])
    data = ShardData(toy.x_train[:90], toy.y_train[:90], bounds)
    host = DeviceHost(0, data, settings, artifact=artifact)
    yield host
    host.close()


def test_a_device_whose_signature_raises_leaves_the_next_device_correct(host3):
    """Default path (validation and pre-summing on the host): device 0's `train` fails inside the
    interpreter; the host records it, takes a fresh interpreter, and device 2's update is exactly
    what it is on a clean host."""
    initial = host3.initial_checkpoint()
    clean = uploads(host3, initial, [2])
    good = host3.device(0)
    broken = Device(0, good.x[:, :27, :27], good.y, good.seed)  # the model cannot take 27x27
    host3.device = lambda d: broken if d == 0 else DeviceHost.device(host3, d)
    first_interpreter = host3.runner
    result = host3.run_round(1, initial, [0, 2], pipeline(host3, initial, "sum"))
    statuses = [(r.device_id, r.status) for r in result.reports]
    assert statuses == [(0, "failed"), (2, "ok")] and result.reports[0].error
    assert host3.runner is not first_interpreter  # the failed device's interpreter was dropped
    (partial,) = result.partials
    assert partial.count == 1 and partial.total_weight == 30.0
    np.testing.assert_array_equal((partial.weighted_sum / 30.0).astype(np.float32), clean[2])


def test_a_round_with_a_bit_flipped_upload_averages_the_others(host3):
    """Default path: device 2's saved file gets one flipped bit after `save` (as a faulty disk or
    link would): it is rejected by its checksum, and the partial averages devices 0 and 4 only."""
    initial = host3.initial_checkpoint()
    clean = uploads(host3, initial, [0, 2, 4])

    class Flipping(Device):
        def run_round(self, runner, global_checkpoint, round_num, local_epochs, batch_size, out, *args):
            update = super().run_round(runner, global_checkpoint, round_num, local_epochs, batch_size, out, *args)
            data = bytearray(out.read_bytes())
            data[len(data) // 2] ^= 0x10
            out.write_bytes(bytes(data))
            return update

    d = host3.device(2)
    flipping = Flipping(2, d.x, d.y, d.seed)
    host3.device = lambda i: flipping if i == 2 else DeviceHost.device(host3, i)
    for _ in range(2):  # the second round reads through the host's fast path
        result = host3.run_round(1, initial, [0, 2, 4], pipeline(host3, initial, "sum"))
        status = {r.device_id: (r.status, r.error) for r in result.reports}
        assert status[0][0] == status[4][0] == "ok"
        assert status[2][0] == "rejected" and "crc32c" in status[2][1]
        (partial,) = result.partials
        assert partial.count == 2 and partial.total_weight == 60.0
        by_hand = (20 * clean[0].astype(np.float64) + 40 * clean[4].astype(np.float64)) / 60
        np.testing.assert_allclose(partial.weighted_sum / 60, by_hand, rtol=1e-12, atol=1e-12)
