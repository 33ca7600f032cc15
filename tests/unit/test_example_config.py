"""config/bridge.example.toml loads, documents every core setting, and its plugin sections build."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.config import (
    EngineSettings,
    HttpSettings,
    LogSettings,
    RelaySettings,
    RetentionSettings,
    SandboxSettings,
    Settings,
    load_settings,
)
from bridge.plugins import CHANNELS, CONNECTORS, discover
from bridge.ports import PluginContext
from bridge.testing import FixedClock

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "bridge.example.toml"
SECTIONS = {"http": HttpSettings, "log": LogSettings, "relay": RelaySettings,
            "retention": RetentionSettings, "engine": EngineSettings, "sandbox": SandboxSettings}


class TestExampleConfig:
    def test_it_loads_as_it_is(self):
        settings = load_settings(EXAMPLE, env={})
        assert settings.http.port == 8080

    def test_every_core_setting_is_written_with_its_default(self):
        raw = tomllib.loads(EXAMPLE.read_text())
        bridge_keys = set(Settings.model_fields) - {"source", "plugin_sections", "secrets",
                                                     *SECTIONS}
        assert bridge_keys <= set(raw["bridge"])
        for name, model in SECTIONS.items():
            assert set(model.model_fields) == set(raw[name]), name
            defaults = model()
            for key, value in raw[name].items():
                expected = getattr(defaults, key)
                assert value == (list(expected) if isinstance(expected, tuple) else expected), (
                    f"{name}.{key}")

    @pytest.mark.parametrize(("group", "path"), [(CONNECTORS, "connectors.fhir"),
                                                 (CONNECTORS, "connectors.hl7v2"),
                                                 (CHANNELS, "whatsapp")])
    def test_plugin_sections_build(self, group, path):
        settings = load_settings(EXAMPLE, env={})
        plugin = discover(group)[path.rsplit(".", 1)[-1]].load()
        context = PluginContext(section_path=path, data_dir=Path("."), secrets={},
                                clock=FixedClock(datetime(2026, 1, 1, tzinfo=UTC)))
        assert plugin.from_config(settings.plugin_section(path), context) is not None
