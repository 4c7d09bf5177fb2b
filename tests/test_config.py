import pytest

from fedsim.experiment.config import Config, ConfigError


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"devices": 0}, "--devices must be at least 1"),
        ({"rounds": 0}, "--rounds must be at least 1"),
        ({"fraction": 0.0}, "--fraction must be in \\(0, 1\\]"),
        ({"fraction": 1.5}, "--fraction must be in \\(0, 1\\]"),
        ({"lr": -0.1}, "--lr must be a positive number"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"local_epochs": 0}, "--local-epochs must be at least 1"),
        ({"devices": 4, "hosts": 5}, "--hosts 5 exceeds --devices 4"),
        ({"hosts": 0}, "--hosts must be at least 1"),
        ({"strategy": "nope"}, "--strategy must be one of"),
        ({"devices": 2.5}, "--devices must be an integer"),
        ({"eval_every": 0}, "--eval-every must be at least 1"),
    ],
)
def test_bad_values_name_the_flag(changes, message):
    with pytest.raises(ConfigError, match=message):
        Config(**changes)


def test_defaults_are_valid_and_round_trip_through_dict():
    c = Config()
    assert Config.from_dict(c.to_dict()) == c


def test_toml_file_with_overrides(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text('devices = 20\nrounds = 3\nlr = 0.1\nname = "exp"\n')
    c = Config.from_toml(f, rounds=7)
    assert (c.devices, c.rounds, c.lr, c.name) == (20, 7, 0.1, "exp")


def test_toml_unknown_key_is_named(tmp_path):
    f = tmp_path / "exp.toml"
    f.write_text("devises = 20\n")
    with pytest.raises(ConfigError, match="unknown config key\\(s\\) devises"):
        Config.from_toml(f)


def test_toml_malformed_or_missing(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("devices = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.from_toml(f)
    with pytest.raises(ConfigError, match="no such file"):
        Config.from_toml(tmp_path / "absent.toml")


def test_devices_per_round():
    assert Config(devices=10, fraction=0.25).devices_per_round == 2
    assert Config(devices=10, fraction=0.01).devices_per_round == 1


def test_reliability_settings():
    assert Config(devices=10, min_devices=10).min_devices == 10
    with pytest.raises(ConfigError, match="--min-devices 6 exceeds the 5 devices selected per round"):
        Config(devices=10, fraction=0.5, min_devices=6)
    with pytest.raises(ConfigError, match="--round-timeout must be a positive number"):
        Config(round_timeout=0)


@pytest.mark.parametrize(
    "text, message",
    [
        ('lr = "0.1"\n', "config key lr must be a number, got the string '0.1'"),
        ('dataset = ["a"]\n', "config key dataset must be a string, got the list \\['a'\\]"),
        ("devices = 2.5\n", "config key devices must be an integer, got the number 2.5"),
        ("devcies = 3\n", "unknown config key\\(s\\) devcies \\(did you mean devices\\?\\)"),
    ],
)
def test_a_config_file_value_of_the_wrong_type_names_the_key_and_the_type(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Config.from_toml(f)


def test_per_round_zero_blames_per_round():
    with pytest.raises(ConfigError, match="--per-round must be between 1 and --devices"):
        Config(per_round=0)
