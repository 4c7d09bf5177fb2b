"""Dealing a round's devices to hosts by expected cost."""

import numpy as np

from fedsim.data.dataset import Dataset
from fedsim.engine.layout import ShardData, shard_data
from fedsim.engine.schedule import deal, expected_costs
from fedsim.engine.settings import HostSettings


def test_deal_puts_the_most_expensive_device_first_on_the_least_loaded_host():
    costs = np.array([5.0, 4.0, 3.0, 3.0, 3.0, 2.0, 2.0])
    per_host = deal(range(7), costs, 2)
    # LPT by hand: 5->h0, 4->h1, 3(d2)->h1 (7), 3(d3)->h0 (8), 3(d4)->h1 (10), 2(d5)->h0 (10),
    # 2(d6)->h0 (tie: lower host)
    assert per_host == {0: [0, 3, 5, 6], 1: [1, 2, 4]}
    loads = {h: costs[ids].sum() for h, ids in per_host.items()}
    assert loads == {0: 12.0, 1: 10.0}
    assert deal([6, 0, 3], None, 2) == {0: [0, 6], 1: [3]}  # equal costs: spread by id
    assert deal([4, 2], costs, 1) == {0: [2, 4]} and deal([], costs, 3) == {}


def test_deal_balances_a_skewed_fleet_far_better_than_round_robin():
    rng = np.random.default_rng(0)
    samples = np.maximum(1, rng.lognormal(3, 1.5, 1000).astype(int))
    costs = expected_costs(samples, HostSettings(1, 32, 0), {"restore": 0.2, "save": 0.3, "train": 0.12})
    for hosts in (2, 8):
        dealt = [costs[ids].sum() for ids in deal(range(1000), costs, hosts).values()]
        round_robin = [costs[h::hosts].sum() for h in range(hosts)]
        assert max(dealt) / np.mean(dealt) < 1.01 < max(round_robin) / np.mean(round_robin)


def test_expected_costs_follow_the_measured_latencies():
    costs = expected_costs(
        np.array([1, 32, 33, 64]), HostSettings(2, 32, 0), {"restore": 1.0, "save": 2.0, "train": 0.5}
    )
    np.testing.assert_allclose(costs * 1e3, [3 + 2 * 0.5, 3 + 2 * 0.5, 3 + 4 * 0.5, 3 + 4 * 0.5])


def test_fleet_data_lays_each_device_out_with_its_own_test_split():
    x = np.arange(10, dtype=np.float32)[:, None]
    ds = Dataset(x, np.arange(10) % 2, x[:2], np.array([0, 1]), num_classes=2)
    fleet = shard_data(ds, [np.array([4, 1]), np.array([0, 9, 7])], [np.array([2]), np.array([], np.int64)])
    assert isinstance(fleet, ShardData) and fleet.devices == 2
    assert fleet.bounds.tolist() == [[0, 2, 3], [3, 6, 6]]
    assert fleet.x[:, 0].tolist() == [4, 1, 2, 0, 9, 7] and fleet.samples.tolist() == [2, 3]
