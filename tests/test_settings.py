"""Settings declared once, where each part configures itself: flags, TOML keys, sweeps and config.json
come from the declarations."""

from dataclasses import dataclass

import pytest

import fedsim
from fedsim.cli import build_parser, config_from_args
from fedsim.core.settings import ConfigError, Section, setting
from fedsim.experiment.config import Config, config_fields
from fedsim.strategies import STRATEGIES, FedAvg


@dataclass(frozen=True)
class DecayParams(Section):
    server_decay: float = setting(0.5, "how much of the last average the server keeps", least=0, below=1)


class Decay(FedAvg):
    name = "decaytest"
    Params = DecayParams


@pytest.fixture
def decay(monkeypatch):
    monkeypatch.setitem(STRATEGIES, "decaytest", Decay)


def test_a_new_strategy_hyperparameter_is_a_flag_a_toml_key_and_sweepable_by_its_declaration(decay, tmp_path):
    from fedsim.experiment.sweep import _configs

    assert "server_decay" in config_fields()
    run = build_parser().parse_args(["run", "--strategy", "decaytest", "--server-decay", "0.25"])
    assert config_from_args(run).server_decay == 0.25
    assert "how much of the last average" in build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    f = tmp_path / "c.toml"
    f.write_text('[strategy]\nname = "decaytest"\nserver_decay = 0.75\n')
    config = Config.from_toml(f)
    assert config.make_strategy().params.server_decay == 0.75
    with pytest.raises(ConfigError, match=r"--server-decay must be in \[0, 1\), got 1.5"):
        Config(strategy="decaytest", server_decay=1.5)
    with pytest.raises(ConfigError, match="--server-decay is not a setting of --strategy fedavg"):
        Config(server_decay=0.1)
    points = _configs(
        Config(strategy="decaytest", devices=4),
        {"devices": [4], "partition": ["iid"], "seed": [0], "server_decay": [0.1, 0.2]},
    )
    assert [c.server_decay for _, c in points] == [0.1, 0.2]
    sweep = build_parser().parse_args(["sweep", "--strategy", "decaytest", "--server-decay", "0.1,0.2"])
    assert sweep.server_decay == "0.1,0.2"


def test_config_json_is_by_section_and_flat_files_still_load(tmp_path):
    config = Config(devices=7, lr=0.1, strategy="fedadam", server_lr=0.02, attack="signflip", byzantine=0.2)
    table = config.to_dict()
    assert table["run"]["devices"] == 7 and table["device"]["lr"] == 0.1
    assert table["strategy"] == {"name": "fedadam", "server_lr": 0.02}
    assert table["pipeline"]["attack"] == {"byzantine": 0.2, "attack": "signflip", "attack_scale": None}
    assert Config.from_dict(table) == config
    # an earlier fedsim's config.json: every setting at the top level, unset strategy settings as null
    flat = {**config.flat(), "beta1": None, "tau": None, "synthetic_samples": 50}
    flat.pop("toy_samples")
    old = Config.from_dict(flat)
    assert old.devices == 7 and old.server_lr == 0.02 and old.toy_samples == 50
    f = tmp_path / "c.toml"
    f.write_text("[run]\ndevices = 5\n[device]\nlr = 0.2\n[pipeline.screen]\nmax_update_norm = 3.0\n")
    assert (Config.from_toml(f).devices, Config.from_toml(f).lr, Config.from_toml(f).max_update_norm) == (5, 0.2, 3.0)
    f.write_text("devices = 5\n[run]\ndevices = 6\n")
    with pytest.raises(ConfigError, match=r"devices given both as devices and as \[run\] devices"):
        Config.from_toml(f)
    f.write_text("[run]\ndevises = 6\n")
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \[run\] devises \(did you mean devices\?\)"):
        Config.from_toml(f)


def test_every_numeric_setting_refuses_what_is_not_a_finite_number_in_its_range():
    for key, value in (("lr", float("inf")), ("fraction", float("nan")), ("deadline", float("inf"))):
        with pytest.raises(ConfigError, match=f"--{key.replace('_', '-')} must"):
            Config(**{key: value, **({"fleet": "uniform"} if key == "deadline" else {})})


def test_what_may_change_on_resume_is_declared_on_the_setting(tmp_path):
    from fedsim.experiment.config import config_fields

    assert {n for n, f in config_fields().items() if f.resumable} == {
        "hosts",
        "address",
        "rounds",
        "dp_epsilon_budget",
        "commit_every",
        "state_cache_mb",
    }
    with pytest.raises(
        ConfigError,
        match="lr cannot change .only rounds, commit_every, dp_epsilon_budget, hosts, address, state_cache_mb may",
    ):
        fedsim.resume(tmp_path, lr=0.1)
