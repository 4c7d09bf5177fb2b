import numpy as np
import pytest

from fedsim.strategies import FedAvg, Update, make_strategy
from fedsim.strategies.aggregate import weighted_mean


def test_fedavg_is_the_sample_weighted_mean_of_three_hand_made_updates(weights_like):
    updates = [Update(0, weights_like(1.0), 10), Update(1, weights_like(2.0), 30), Update(2, weights_like(4.0), 60)]
    new = FedAvg().aggregate(weights_like(0.0), updates)
    expected = (1.0 * 10 + 2.0 * 30 + 4.0 * 60) / 100  # = 3.1
    np.testing.assert_allclose(new["a/kernel"], np.full((2, 3), expected), rtol=1e-6)
    np.testing.assert_allclose(new["a/bias"], np.full((3,), expected), rtol=1e-6)
    assert new["a/kernel"].dtype == np.float32


def test_weighted_mean_elementwise():
    w1 = {"t": np.array([0.0, 10.0], np.float32)}
    w2 = {"t": np.array([4.0, 20.0], np.float32)}
    out = weighted_mean([w1, w2], [3, 1])
    np.testing.assert_allclose(out["t"], [1.0, 12.5])


def test_weighted_mean_refuses_bad_factors(weights_like):
    with pytest.raises(ValueError, match="positive sum"):
        weighted_mean([weights_like(1.0)], [0])
    with pytest.raises(ValueError, match="2 weight sets but 1 factors"):
        weighted_mean([weights_like(1.0), weights_like(2.0)], [1])
    with pytest.raises(ValueError, match="no weights"):
        weighted_mean([], [])


def test_make_strategy_by_name():
    assert isinstance(make_strategy("fedavg"), FedAvg)
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        make_strategy("nope")


def test_partials_combine_to_the_same_mean(weights_like):
    from fedsim.strategies import Partial
    from fedsim.strategies.aggregate import accumulate, combine_partials

    fedavg = FedAvg()
    a, b = {}, {}
    accumulate(a, weights_like(1.0), fedavg.coefficient(10))
    accumulate(a, weights_like(2.0), fedavg.coefficient(30))
    accumulate(b, weights_like(4.0), fedavg.coefficient(60))
    partials = [Partial(a, 40.0, 2), Partial(b, 60.0, 1), Partial({}, 0.0, 0)]
    out = fedavg.aggregate_partials(weights_like(0.0), partials)
    np.testing.assert_allclose(out["a/bias"], np.full(3, 3.1), rtol=1e-6)
    assert out["a/bias"].dtype == np.float32
    with pytest.raises(ValueError, match="no partial"):
        combine_partials([Partial({}, 0.0, 0)], {"a/bias": np.float32})


def test_partial_sum_groups_equal_coefficients_and_caps_the_groups(weights_like):
    from fedsim.strategies.aggregate import PartialSum

    ps = PartialSum(max_groups=2)
    for value, c in [(1.0, 10), (2.0, 10), (3.0, 20), (4.0, 30), (5.0, 30), (6.0, 20)]:
        ps.add(weights_like(value), c)
    assert sorted(ps.groups) == [10, 20]  # 30 exceeded the cap and was scaled at once
    p = ps.partial()
    expected = 1 * 10 + 2 * 10 + 3 * 20 + 4 * 30 + 5 * 30 + 6 * 20
    np.testing.assert_allclose(p.weighted_sum["a/bias"], np.full(3, expected))
    assert (p.total_weight, p.count) == (120.0, 6)
    assert p.weighted_sum["a/bias"].dtype == np.float64


def test_partial_sum_of_flat_vectors_equals_the_per_tensor_sum(weights_like):
    from fedsim.strategies.aggregate import PartialSum

    rng = np.random.default_rng(0)
    updates = [({k: (v + rng.standard_normal(v.shape)).astype(np.float32) for k, v in weights_like(0.0).items()}, c)
               for c in (10, 10, 20, 30, 30, 40, 50, 60)]  # more coefficients than groups
    plain, flat = PartialSum(max_groups=2), PartialSum(max_groups=2)
    for w, c in updates:
        plain.add(w, c)
        flat.add(w, c, np.concatenate([w[k].ravel() for k in w]))
    a, b = plain.partial(), flat.partial()
    assert (a.total_weight, a.count) == (b.total_weight, b.count) == (250.0, 8)
    expected = {k: sum(np.float64(c) * w[k].astype(np.float64) for w, c in updates) for k in updates[0][0]}
    for k, value in expected.items():
        np.testing.assert_array_equal(a.weighted_sum[k], b.weighted_sum[k])
        np.testing.assert_allclose(a.weighted_sum[k], value, rtol=1e-12)
        assert a.weighted_sum[k].shape == updates[0][0][k].shape
