"""Settings: one declaration each, validated at start-up with errors that name key, value and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

import rover_stream
from rover_stream import ConfigError
from rover_stream.settings import SETTINGS, load, markdown_table

DOCS = Path(__file__).resolve().parent.parent / "docs" / "settings.md"


def test_defaults() -> None:
    settings = load(environ={})
    for setting in SETTINGS:
        assert settings[setting.name] == setting.default
    assert settings.max_streams == 900  # auto: 90% of the default 1000 worker connections


def test_environment_is_parsed_and_config_wins() -> None:
    settings = load({"HEARTBEAT_INTERVAL": 2}, environ={"ROVER_HEARTBEAT_INTERVAL": "5", "ROVER_WORKERS": "3",
                                                         "ROVER_DEMO": "off", "ROVER_MAX_STREAMS": "10"})
    assert settings["HEARTBEAT_INTERVAL"] == 2.0
    assert settings["WORKERS"] == 3
    assert settings["DEMO"] is False
    assert settings.max_streams == 10


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ROVER_HEARTBEAT_INTERVAL", "abc"),
        ("ROVER_HEARTBEAT_INTERVAL", "0"),
        ("ROVER_HEARTBEAT_INTERVAL", "nan"),
        ("ROVER_WORKERS", "0"),
        ("ROVER_WORKERS", "2.5"),
        ("ROVER_BIND", "localhost"),
        ("ROVER_BIND", "127.0.0.1:70000"),
        ("ROVER_DEMO", "maybe"),
        ("ROVER_LOG_LEVEL", "loud"),
        ("ROVER_RETRY_MS", "-5"),
    ],
)
def test_invalid_values_name_setting_value_and_rule(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(environ={key: value})
    message = str(info.value)
    assert key in message
    assert repr(value) in message
    assert "allowed:" in message


def test_create_app_refuses_bad_settings_and_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="ROVER_MAX_STREAMS"):
        rover_stream.create_app({"ROVER_MAX_STREAMS": -1})
    with pytest.raises(ConfigError, match="Unknown setting 'ROVER_HEARTBEAT'.*ROVER_HEARTBEAT_INTERVAL"):
        rover_stream.create_app({"ROVER_HEARTBEAT": 3})


def test_docs_table_is_generated_from_the_declarations() -> None:
    assert DOCS.read_text() == markdown_table(), "regenerate: python -m rover_stream.settings > docs/settings.md"
    for setting in SETTINGS:
        assert f"`{setting.key}`" in DOCS.read_text()
