"""Config loading, overrides with clear errors, JSON round trips, diffs and the README table."""

import json

import pytest

from experiments import config_table
from protojax import config as config_lib
from protojax.errors import UsageError


@pytest.fixture()
def config():
    return config_lib.load_config("blackbox_digits")


def test_loads_by_name_and_by_path(config):
    by_path = config_lib.load_config(str(config_lib.CONFIG_DIR / "blackbox_digits.py"))
    assert config.method == "blackbox" and by_path.train.epochs == config.train.epochs


def test_unknown_config_name_suggests_the_closest():
    with pytest.raises(UsageError, match="did you mean blackbox_digits") as info:
        config_lib.load_config("blackbox_digit")
    assert info.value.exit_code == 2


def test_unknown_key_names_closest_valid_keys(config):
    with pytest.raises(UsageError, match=r"'train\.epoch'.*train\.epochs"):
        config_lib.set_value(config, "train.epoch", "3")
    with pytest.raises(UsageError, match=r"'trian\.epochs'.*train\.epochs"):
        config_lib.set_value(config, "trian.epochs", "3")


@pytest.mark.parametrize(
    "key, raw, message",
    [
        ("train.epochs", "three", "expects an integer"),
        ("optim.lr", "fast", "expects a number"),
        ("train.progress", "maybe", "expects true or false"),
        ("train", "3", "is a group"),
    ],
)
def test_wrong_types_are_usage_errors(config, key, raw, message):
    with pytest.raises(UsageError, match=message):
        config_lib.set_value(config, key, raw)


def test_values_are_parsed_by_the_existing_type(config):
    config_lib.apply_overrides(
        config,
        [("train.epochs", "3"), ("optim.lr", "1e-2"), ("train.progress", "false"), ("seed", 7)],
    )
    assert config.train.epochs == 3 and config.optim.lr == pytest.approx(0.01)
    assert config.train.progress is False and config.seed == 7


def test_json_round_trip_and_runtime_keys(config):
    data = json.loads(config_lib.to_json(config))
    again = config_lib.from_dict(data)
    assert config_lib.to_dict(again) == config_lib.to_dict(config)
    changed = json.loads(json.dumps(data))
    changed["train"]["stop_after_steps"] = 5
    changed["train"]["log_every_steps"] = 1
    assert config_lib.differing_keys(data, changed) == []
    changed["optim"]["lr"] = 0.5
    changed["data"]["augment"]["hflip"] = True
    assert config_lib.differing_keys(data, changed) == ["data.augment.hflip", "optim.lr"]


def test_readme_config_table_is_current():
    text = config_table.README.read_text()
    assert config_table.updated_readme(text) == text, (
        "README.md's config table is stale: run python -m experiments.config_table"
    )
    names = {row["name"] for row in config_table.config_docs()}
    assert set(config_lib.available_configs()) == names
