"""The host-side running sum and the strategy registry (each strategy's formula: test_strategy_zoo.py)."""

import numpy as np
import pytest

from fedsim.strategies import FedAvg, make_strategy, reduce_partials
from fedsim.strategies.aggregate import PartialSum


def test_make_strategy_by_name():
    assert isinstance(make_strategy("fedavg"), FedAvg)
    with pytest.raises(ValueError, match="--strategy must be one of .*got 'nope'"):
        make_strategy("nope")


def test_partials_of_several_hosts_reduce_to_one_mean():
    a, b, empty = PartialSum(), PartialSum(), PartialSum()
    a.add(np.full(4, 1.0, np.float32), 10)
    a.add(np.full(4, 2.0, np.float32), 30)
    b.add(np.full(4, 4.0, np.float32), 60)
    agg = reduce_partials([a.partial(), b.partial()])
    np.testing.assert_allclose(agg.mean(), np.full(4, 3.1), rtol=1e-12)  # (10 + 60 + 240) / 100
    assert (agg.count, agg.total_weight) == (3, 100.0)
    with pytest.raises(ValueError, match="no partial"):
        reduce_partials([empty.partial()])


def test_partial_sum_groups_equal_coefficients_and_caps_the_groups():
    ps = PartialSum(max_groups=2)
    for value, c in [(1.0, 10), (2.0, 10), (3.0, 20), (4.0, 30), (5.0, 30), (6.0, 20)]:
        ps.add(np.full(3, value, np.float32), c)
    assert sorted(ps.groups) == [10, 20]  # 30 exceeded the cap and was scaled at once
    p = ps.partial()
    expected = 1 * 10 + 2 * 10 + 3 * 20 + 4 * 30 + 5 * 30 + 6 * 20
    np.testing.assert_allclose(p.weighted_sum, np.full(3, expected))
    assert (p.total_weight, p.count) == (120.0, 6)
    assert p.weighted_sum.dtype == np.float64


def test_partial_sum_is_exact_in_float64_whatever_the_grouping():
    rng = np.random.default_rng(0)
    updates = [(rng.standard_normal(50).astype(np.float32), c) for c in (10, 10, 20, 30, 30, 40, 50, 60)]
    grouped, scaled = PartialSum(max_groups=4), PartialSum(max_groups=0)
    for w, c in updates:
        grouped.add(w, c)
        scaled.add(w, c)
    expected = sum(np.float64(c) * w.astype(np.float64) for w, c in updates)
    np.testing.assert_allclose(grouped.partial().weighted_sum, expected, rtol=1e-12)
    np.testing.assert_allclose(scaled.partial().weighted_sum, expected, rtol=1e-12)
