"""The pipeline's registry: stages ordered by what they declare, conflicts refused by declaration."""

import pytest

from fedsim.core.settings import ConfigError
from fedsim.pipeline import REGISTERED, STAGES, Pipeline, in_order
from fedsim.pipeline.base import Stage
from fedsim.strategies import FedAvg


def test_the_order_is_what_the_stages_declare_whatever_the_registry_lists():
    assert [s.name for s in STAGES] == ["verify", "attack", "personal", "dp", "ldp", "compress", "secagg", "screen"]
    assert in_order(tuple(reversed(REGISTERED))) == STAGES
    for i, stage in enumerate(STAGES):
        assert all(n in [s.name for s in STAGES[:i]] for n in stage.after)


def test_an_order_that_names_no_stage_or_goes_in_a_circle_is_refused():
    class A(Stage):
        name = "a"
        after = ("b",)

    class B(Stage):
        name = "b"
        after = ("a",)

    with pytest.raises(ValueError, match="circle"):
        in_order((A, B))
    with pytest.raises(ValueError, match="no registered stage"):
        in_order((A,))


def test_conflicts_are_refused_by_the_stage_that_declares_them():
    from fedsim.experiment.config import Config

    config = Config(secagg="secagg", compress="q8")
    pipeline = Pipeline.build(config.stage_settings)
    with pytest.raises(ConfigError, match="--compress with --secagg"):
        pipeline.check(FedAvg())
    config = Config(secagg="secagg", max_update_norm=1.0)
    with pytest.raises(ConfigError, match="with --secagg: the server sees only the sum"):
        Pipeline.build(config.stage_settings).check(FedAvg())
