"""Every strategy against its paper's formula, on three to seven hand-made updates.

Global weights w = [0, 0]; the three updates of most tests and their samples:
  u1 = [1, 2] (10), u2 = [3, 0] (30), u3 = [-2, 4] (60)
  sample-weighted mean = [(10 - 120 + 90) / 100, (20 + 0 + 240) / 100] = [-0.2, 2.6]
"""

import math

import numpy as np
import pytest

from fedsim.experiment.config import Config, ConfigError
from fedsim.pipeline.attack import Attack, byzantine_devices
from fedsim.pipeline.attacks.alie import alie_z
from fedsim.strategies import (
    STRATEGIES,
    Aggregate,
    Bulyan,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedYogi,
    Krum,
    MultiKrum,
    QFedAvg,
    TrimmedMean,
    make_strategy,
    reduce_partials,
)
from fedsim.strategies.aggregate import PartialSum, Stack

W0 = np.zeros(2, np.float32)
ROWS = np.array([[1, 2], [3, 0], [-2, 4]], np.float32)
SAMPLES = np.array([10, 30, 60])


def stacked(rows, samples=None, losses=None):
    rows = np.asarray(rows, np.float32)
    n = len(rows)
    samples = np.ones(n, np.int64) if samples is None else np.asarray(samples)
    losses = np.full(n, np.nan) if losses is None else np.asarray(losses, np.float64)
    return Aggregate(n, float(samples.sum()), rows=rows, device_ids=np.arange(n), samples=samples, start_losses=losses)


def summed(rows=ROWS, samples=SAMPLES):
    acc = PartialSum()
    for r, c in zip(rows, samples):
        acc.add(r, float(c))
    return reduce_partials([acc.partial()])


def run(strategy, agg, w=W0, state=None):
    state = strategy.init(w) if state is None else state
    new, state = strategy.apply(w, agg, state)
    assert new.dtype == np.float32
    return new.astype(np.float64), state


def test_fedavg_is_the_sample_weighted_mean_from_sums_and_from_rows():
    np.testing.assert_allclose(run(FedAvg(), summed())[0], [-0.2, 2.6], rtol=1e-6)
    np.testing.assert_allclose(run(FedAvg(), stacked(ROWS, SAMPLES))[0], [-0.2, 2.6], rtol=1e-6)


def test_fedavgm_keeps_momentum_across_rounds():
    s = FedAvgM(server_lr=1.0, server_momentum=0.9)
    # round 1: d = mean - w = [-0.2, 2.6]; m = d; w = w + m = [-0.2, 2.6]
    w1, state = run(s, summed())
    np.testing.assert_allclose(w1, [-0.2, 2.6], rtol=1e-6)
    # round 2, the devices return w1 itself: d = 0; m = 0.9 * [-0.2, 2.6]; w = w1 + m = [-0.38, 4.94]
    same = summed(np.tile(w1.astype(np.float32), (3, 1)))
    w2, state = run(s, same, w1.astype(np.float32), state)
    np.testing.assert_allclose(w2, [-0.38, 4.94], rtol=1e-5)
    np.testing.assert_allclose(state["m"], [-0.18, 2.34], rtol=1e-5)


def test_fedavgm_continues_from_the_momentum_an_earlier_version_saved():
    """fedsim before the server-optimiser strategy kept FedAvgM's v on w - mean: the other sign."""
    s = FedAvgM(server_lr=1.0, server_momentum=0.9)
    _, new = run(s, summed())
    old = {"momentum": -new["m"]}
    np.testing.assert_array_equal(s.resume_state(old, W0)["m"], new["m"])
    with pytest.raises(ValueError, match="saved server state holds"):
        s.resume_state({"m": np.zeros(3)}, W0)


@pytest.mark.parametrize(
    "cls, v",
    [
        # v starts at tau^2 = 1e-4; d = [-0.2, 2.6], d^2 = [0.04, 6.76]
        (FedAdam, [0.99e-4 + 0.01 * 0.04, 0.99e-4 + 0.01 * 6.76]),  # beta2 v + (1 - beta2) d^2
        (FedYogi, [1e-4 + 0.01 * 0.04, 1e-4 + 0.01 * 6.76]),  # v - (1 - beta2) d^2 sign(v - d^2), v < d^2
        (FedAdagrad, [1e-4 + 0.04, 1e-4 + 6.76]),  # v + d^2
    ],
)
def test_adaptive_server_optimisers_follow_reddi_et_al(cls, v):
    s = cls(server_lr=0.1, beta1=0.9, tau=0.01, **({} if cls is FedAdagrad else {"beta2": 0.99}))
    w1, state = run(s, summed())
    m = [0.1 * -0.2, 0.1 * 2.6]  # (1 - beta1) d
    np.testing.assert_allclose(state["m"], m, rtol=1e-6)
    np.testing.assert_allclose(state["v"], v, rtol=1e-6)
    expected = [0.1 * m[i] / (math.sqrt(v[i]) + 0.01) for i in range(2)]
    np.testing.assert_allclose(w1, expected, rtol=1e-5)


def test_fedyogi_shrinks_v_when_it_exceeds_d_squared():
    s = FedYogi(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    state = {"m": np.zeros(2), "v": np.array([10.0, 10.0])}
    _, state = run(s, summed(), state=state)
    # v > d^2: v - 0.01 d^2
    np.testing.assert_allclose(state["v"], [10 - 0.01 * 0.04, 10 - 0.01 * 6.76], rtol=1e-9)


def test_qfedavg_follows_li_et_al():
    losses = [0.5, 1.0, 2.0]
    # L = 10, q = 1: dw_k = 10 * (0 - u_k) = [-10, -20], [-30, 0], [20, -40]
    # sum F_k dw_k = [-5 - 30 + 40, -10 + 0 - 80] = [5, -90]
    # h_k = ||dw_k||^2 + L F_k = 500 + 5, 900 + 10, 2000 + 20 -> 3435
    w1, _ = run(QFedAvg(q=1.0, lipschitz=10.0), stacked(ROWS, SAMPLES, losses))
    np.testing.assert_allclose(w1, [-5 / 3435, 90 / 3435], rtol=1e-5)
    # q = 0: h_k = L, so w = mean of the u_k, unweighted: [2/3, 2]
    w0, _ = run(QFedAvg(q=0.0, lipschitz=10.0), stacked(ROWS, SAMPLES, losses))
    np.testing.assert_allclose(w0, [2 / 3, 2.0], rtol=1e-5)


FIVE = [[1, 5], [2, -1], [100, 0], [3, 2], [-4, 7]]


def test_fedmedian_is_the_coordinatewise_median():
    # sorted: [-4, 1, 2, 3, 100] and [-1, 0, 2, 5, 7]
    np.testing.assert_allclose(run(FedMedian(), stacked(FIVE))[0], [2, 2])


def test_trimmed_mean_drops_one_from_each_end_of_five():
    # trim 0.2 of 5 = 1 from each end: mean(1, 2, 3) and mean(0, 2, 5)
    np.testing.assert_allclose(run(TrimmedMean(trim=0.2), stacked(FIVE))[0], [2, 7 / 3], rtol=1e-6)


KRUM = [[0, 0], [1, 0], [0, 2], [10, 10], [1, 1]]
# squared distances: ab 1, ac 4, ad 200, ae 2, bc 5, bd 181, be 1, cd 164, ce 2, de 162
# Krum scores with f = 1 (the n - f - 2 = 2 nearest): a 1+2=3, b 1+1=2, c 2+4=6, d 162+164=326, e 1+2=3


def test_krum_picks_the_update_with_the_lowest_score():
    np.testing.assert_allclose(run(Krum(assumed_byzantine=1), stacked(KRUM))[0], [1, 0])


def test_multikrum_averages_the_m_lowest_scores():
    # b (2), then a and e (3 each)
    np.testing.assert_allclose(
        run(MultiKrum(assumed_byzantine=1, krum_m=3), stacked(KRUM))[0], [2 / 3, 1 / 3], rtol=1e-6
    )


def test_bulyan_selects_by_krum_then_averages_around_the_median():
    from fedsim.strategies import robust

    rows = np.array([[0], [1], [2], [3], [4], [5], [100]], np.float32)
    # n = 7, f = 1: theta = 5 updates picked by Krum in turn: 2, 3, 1, 4, 5 (0 and 100 left out);
    # beta = theta - 2f = 3 values nearest the median 3 of {1..5}: 3, 2, 4 -> 3
    mean, picked = robust.bulyan(rows, np.zeros(1), 1)
    assert picked.tolist() == [2, 3, 1, 4, 5]
    np.testing.assert_allclose(mean, [3.0])
    np.testing.assert_allclose(run(Bulyan(assumed_byzantine=1), stacked(rows), np.zeros(1, np.float32))[0], [3.0])
    with pytest.raises(ValueError, match="4f \\+ 3"):
        robust.bulyan(rows[:6], np.zeros(1), 1)


def test_alie_replaces_attackers_with_mean_minus_z_std_of_the_honest():
    # n = 5, m = 1: s = floor(5/2 + 1) - 1 = 2, z = Phi^-1(3/5) = 0.2533
    assert alie_z(5, 1) == pytest.approx(0.253347, abs=1e-5)
    agg = stacked([[1.0], [2.0], [3.0], [4.0], [50.0]])
    out = Attack("alie").attack.server(agg, np.array([4]))
    # honest mean 2.5, population std sqrt(1.25)
    assert out.rows[4, 0] == pytest.approx(2.5 - 0.253347 * math.sqrt(1.25), rel=1e-5)
    np.testing.assert_array_equal(out.rows[:4], agg.rows[:4])


def test_signflip_and_gaussian_uploads():
    g = np.array([1.0, 1.0])
    np.testing.assert_allclose(Attack("signflip").attack.upload(np.array([2, 3], np.float32), g, 0, 1), [-3, -7])
    gaussian = Attack("gaussian", scale=2.0, seed=1).attack
    a = gaussian.upload(np.zeros(2, np.float32), np.zeros(100000), 3, 1)
    assert a.std() == pytest.approx(2.0, rel=0.02)
    np.testing.assert_array_equal(a, gaussian.upload(np.zeros(2), np.zeros(100000), 3, 1))


def test_byzantine_devices_are_seeded_and_sized():
    a = byzantine_devices(100, 0.2, 0)
    assert len(a) == 20 and len(set(a.tolist())) == 20
    np.testing.assert_array_equal(a, byzantine_devices(100, 0.2, 0))
    assert not np.array_equal(a, byzantine_devices(100, 0.2, 1))


def test_partials_from_hosts_reduce_to_the_same_rows_in_device_order():
    a, b = Stack(), Stack()
    a.add(ROWS[2], 60, device_id=7, samples=60)
    b.add(ROWS[0], 10, device_id=2, samples=10)
    b.add(ROWS[1], 30, device_id=5, samples=30)
    agg = reduce_partials([a.partial(), b.partial()])
    assert agg.device_ids.tolist() == [2, 5, 7]
    np.testing.assert_array_equal(agg.rows, ROWS)
    np.testing.assert_allclose(agg.mean(), [-0.2, 2.6])


def test_fedprox_plans_mu_for_every_device():
    plan = FedProx(mu=0.5).plan(3, [1, 4], {})
    assert {d: p.instructions["proximal"].mu for d, p in plan.items()} == {1: 0.5, 4: 0.5}
    assert plan[1].instructions["proximal"].train_inputs()["mu"] == np.float32(0.5)
    assert [n for kind in FedProx.instructions for n in kind.needs] == ["proximal"]


def test_hyperparameters_are_validated_in_one_line():
    with pytest.raises(ValueError, match="--beta1 must be in \\[0, 1\\), got 1.5"):
        FedAdam(beta1=1.5)
    with pytest.raises(ConfigError, match="--tau is not a setting of --strategy fedavgm"):
        Config(strategy="fedavgm", tau=0.1)
    with pytest.raises(ConfigError, match="--server-lr must be a positive number"):
        Config(strategy="fedadam", server_lr=-1.0)
    with pytest.raises(ConfigError, match="--byzantine 0.2 needs --attack"):
        Config(byzantine=0.2)
    with pytest.raises(ConfigError, match="--attack must be one of"):
        Config(byzantine=0.2, attack="nope")
    assert make_strategy("fedadam", server_lr=0.5).params.server_lr == 0.5


def test_strategy_table_in_toml(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('devices = 4\n[strategy]\nname = "fedadam"\nserver_lr = 0.05\nbeta1 = 0.8\n')
    c = Config.from_toml(f)
    assert (c.strategy, c.server_lr, c.beta1) == ("fedadam", 0.05, 0.8)
    f.write_text('[strategy]\nname = "fedadam"\nlr_server = 0.05\n')
    with pytest.raises(ConfigError, match="lr_server: not a strategy setting"):
        Config.from_toml(f)


def test_every_strategy_is_registered_by_its_name():
    assert sorted(STRATEGIES) == sorted(
        [
            "fedavg",
            "fedavgm",
            "fedadam",
            "fedyogi",
            "fedadagrad",
            "qfedavg",
            "fedprox",
            "scaffold",
            "fedmedian",
            "trimmedmean",
            "krum",
            "multikrum",
            "bulyan",
            "fedper",
            "fedrep",
            "ditto",
            "local",
        ]
    )
    for name, cls in STRATEGIES.items():
        assert cls.name == name


def scaffold_run(devices=4, lr=0.1, batch_size=10):
    """A SCAFFOLD bound to a run of `devices` devices training with `lr`, one step per 10 samples."""
    from fedsim.core.context import RunContext
    from fedsim.core.task import Task
    from fedsim.strategies import Scaffold

    run_ = RunContext(Task((2,), "features", 2), devices, devices, np.full(devices, 10), batch_size=batch_size, lr=lr)
    return Scaffold(server_lr=1.0).bind(run_)


def c_rows(state, devices=4):
    """SCAFFOLD's c_i of every device (kept by id: a device that never took part has none, i.e. 0)."""
    dense = np.zeros((devices, state["c_rows"].shape[1]))
    dense[state["c_ids"]] = state["c_rows"]
    return dense


def test_scaffold_updates_control_variates_by_option_ii():
    s = scaffold_run()
    state = s.init(W0)
    assert state["c_rows"].shape == (0, 2)  # no device has a control variate yet
    # devices 0 (20 samples: K = 2 steps) and 2 (10 samples: K = 1) take part
    agg = Aggregate(
        2,
        30.0,
        rows=np.array([[1, -1], [0.5, 0.5]], np.float32),
        device_ids=np.array([0, 2]),
        samples=np.array([20, 10]),
        start_losses=np.full(2, np.nan),
        steps=np.array([-1, -1]),
    )
    w1, state = run(s, agg, state=state)
    # c_0+ = (x - y_0) / (2 * 0.1) = [-5, 5]; c_2+ = (x - y_2) / (1 * 0.1) = [-5, -5]
    assert state["c_ids"].tolist() == [0, 2]  # kept by id, only the devices that took part
    np.testing.assert_allclose(c_rows(state), [[-5, 5], [0, 0], [-5, -5], [0, 0]], rtol=1e-6)
    # c = 0 + (sum of c_i+ - c_i) / N = [-10, 0] / 4
    np.testing.assert_allclose(state["c"], [-2.5, 0], rtol=1e-6)
    # x = mean(y_i) (unweighted) with server_lr 1
    np.testing.assert_allclose(w1, [0.75, -0.25], rtol=1e-6)
    # next round: device 0 gets c - c_0 = [2.5, -5]; device 1, which has not taken part, gets c
    plan = s.plan(2, [0, 1], state)
    np.testing.assert_allclose(plan[0].instructions["control"].correction, [2.5, -5])
    np.testing.assert_allclose(plan[1].instructions["control"].correction, [-2.5, 0])
    assert plan[0].instructions["control"].restore_inputs()["control"].dtype == np.float32


def test_scaffold_reads_the_dense_state_of_an_earlier_version():
    s = scaffold_run()
    dense = np.array([[-5, 5], [0, 0], [-5, -5], [0, 0]], np.float32)
    state = s.resume_state({"c": np.array([-2.5, 0.0]), "c_devices": dense}, W0)
    assert state["c_ids"].tolist() == [0, 2]
    np.testing.assert_array_equal(c_rows(state), dense)


def test_scaffold_counts_the_steps_a_deadline_left_a_straggler():
    """--straggler partial: device 0 (20 samples, 2 steps) ran only 1 by the deadline, so its
    c_0+ = (x - y_0) / (1 * 0.1), not / (2 * 0.1); device 2 ran all of its steps (-1)."""
    s = scaffold_run()
    agg = Aggregate(
        2,
        30.0,
        rows=np.array([[1, -1], [0.5, 0.5]], np.float32),
        device_ids=np.array([0, 2]),
        samples=np.array([20, 10]),
        start_losses=np.full(2, np.nan),
        steps=np.array([1, -1]),
    )
    _, state = run(s, agg, state=s.init(W0))
    np.testing.assert_allclose(c_rows(state), [[-10, 10], [0, 0], [-5, -5], [0, 0]], rtol=1e-6)
    np.testing.assert_allclose(state["c"], [-3.75, 1.25], rtol=1e-6)  # ([-10, 10] + [-5, -5]) / 4
