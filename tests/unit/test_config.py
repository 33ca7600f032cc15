"""Configuration: TOML + environment, every problem at once, secrets only from the environment."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.config import load_settings, normalise_database_url, redact_url
from bridge.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.toml"
    path.write_text(text, encoding="utf-8")
    return path


class TestDefaults:
    def test_no_config_gives_sqlite_under_the_data_dir_and_loopback_http(self):
        settings = load_settings(None, env={})
        assert settings.sqlalchemy_url == "sqlite+aiosqlite:///.bridge/bridge.db"
        assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
        assert settings.channel == "whatsapp"
        assert settings.connectors == ()

    def test_environment_overrides_data_dir_database_and_ports(self, tmp_path):
        env = {"BRIDGE_DATA_DIR": str(tmp_path), "BRIDGE_HTTP_PORT": "9090",
               "BRIDGE_MLLP_PORT": "2576"}
        settings = load_settings(None, env=env)
        assert settings.sqlalchemy_url == f"sqlite+aiosqlite:///{tmp_path}/bridge.db"
        assert settings.http.port == 9090
        assert settings.plugin_section("connectors.hl7v2") == {"port": 2576}

    @pytest.mark.parametrize(
        ("plain", "driver"),
        [
            ("postgresql://u:p@db.example/bridge", "postgresql+asyncpg://u:p@db.example/bridge"),
            ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
            ("sqlite:////var/lib/bridge/b.db", "sqlite+aiosqlite:////var/lib/bridge/b.db"),
            ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ],
    )
    def test_plain_database_urls_get_the_async_driver(self, plain, driver):
        assert normalise_database_url(plain) == driver

    def test_passwords_are_hidden_in_urls_shown_to_people(self):
        assert redact_url("postgresql://bridge:s3cr3t@db/x") == "postgresql://bridge:***@db/x"


class TestProblems:
    def test_every_problem_is_reported_at_once_with_file_and_key(self, tmp_path):
        path = write(tmp_path, """
[bridge]
timezone = "Mars/Olympus"
[http]
port = 99999
colour = "blue"
[unknown_section]
x = 1
""")
        with pytest.raises(ConfigError) as caught:
            load_settings(path, env={"BRIDGE_DATABASE_URL": "mysql://x@y/z"})
        keys = {p.key for p in caught.value.problems}
        assert {"http.port", "http.colour", "unknown_section", "bridge.timezone"} <= keys
        assert any("database" in k for k in keys)
        assert all(p.source in (str(path), "environment") for p in caught.value.problems)

    def test_broken_toml_names_the_file(self, tmp_path):
        path = write(tmp_path, "[bridge\n")
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_settings(path, env={})

    def test_a_secret_in_the_toml_is_refused(self, tmp_path):
        path = write(tmp_path, '[whatsapp]\naccess_token = "EAAB..."\n')
        with pytest.raises(ConfigError) as caught:
            load_settings(path, env={})
        assert caught.value.problems[0].key == "whatsapp.access_token"
        assert "EAAB" not in str(caught.value)

    def test_bad_port_in_the_environment_is_named(self):
        with pytest.raises(ConfigError, match="BRIDGE_HTTP_PORT"):
            load_settings(None, env={"BRIDGE_HTTP_PORT": "eighty"})


class TestSecrets:
    def test_secrets_come_from_the_environment_or_a_file(self, tmp_path):
        secret_file = tmp_path / "app_secret"
        secret_file.write_text("from-file\n")
        os.chmod(secret_file, 0o600)
        settings = load_settings(None, env={
            "BRIDGE_WHATSAPP_TOKEN": "from-env",
            "BRIDGE_WHATSAPP_APP_SECRET_FILE": str(secret_file),
        })
        assert settings.secrets["BRIDGE_WHATSAPP_TOKEN"] == "from-env"
        assert settings.secrets["BRIDGE_WHATSAPP_APP_SECRET"] == "from-file"
        assert "from-env" not in repr(settings)

    def test_a_world_readable_secret_file_is_a_problem(self, tmp_path):
        secret_file = tmp_path / "token"
        secret_file.write_text("t")
        os.chmod(secret_file, 0o644)
        with pytest.raises(ConfigError, match="world-readable"):
            load_settings(None, env={"BRIDGE_WHATSAPP_TOKEN_FILE": str(secret_file)})


class TestSecretReferences:
    def test_a_key_naming_a_secret_variable_is_allowed_and_any_bridge_secret_is_read(self, tmp_path):
        path = write(tmp_path, '[connectors.fhir]\ntoken_secret = "BRIDGE_FHIR_TOKEN"\n'
                               '[[connectors.fhir.subscriptions]]\nid = "appts"\n'
                               'secret = "BRIDGE_FHIR_SUB_APPTS_SECRET"\n')
        settings = load_settings(path, env={"BRIDGE_FHIR_SUB_APPTS_SECRET": "s3cr3t-value"})
        assert settings.secrets["BRIDGE_FHIR_SUB_APPTS_SECRET"] == "s3cr3t-value"
        assert settings.plugin_section("connectors.fhir")["token_secret"] == "BRIDGE_FHIR_TOKEN"
