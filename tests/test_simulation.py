"""fedsim.run wiring, in-process: both aggregation paths give the same model."""

import numpy as np

import fedsim
from fedsim.strategies import FedAvg


class FedAvgOnCoordinator(FedAvg):
    linear = False


def test_host_partials_and_coordinator_fedavg_agree(tmp_path):
    settings = dict(dataset="synthetic", synthetic_samples=30, devices=6, rounds=2, seed=2, progress=False)
    on_hosts = fedsim.run(out=str(tmp_path / "a"), engine=fedsim.LocalEngine(2), **settings)
    on_coord = fedsim.run(out=str(tmp_path / "b"), engine=fedsim.LocalEngine(2), strategy=FedAvgOnCoordinator(), **settings)
    np.testing.assert_allclose(on_hosts.rounds["test_loss"], on_coord.rounds["test_loss"], rtol=1e-5)
    np.testing.assert_array_equal(on_hosts.devices["checkpoint_bytes"], on_coord.devices["checkpoint_bytes"])
    assert on_hosts.rounds["elapsed_s"].is_monotonic_increasing
