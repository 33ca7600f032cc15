"""Settings: one TOML file plus a few environment variables, validated all at once.

The CLI loads :class:`Settings` once with :func:`load_settings` and passes it to
``bootstrap``; nothing else reads ``os.environ`` (STYLE.md §7). Every problem is collected and
raised together as one :class:`bridge.errors.ConfigError` naming file, key and reason, so an
operator fixes a config in one pass instead of one error per restart.

Secrets (WhatsApp token, app secret, verify token, FHIR keys, admin tokens, the data key that
seals patient phones and names at rest) never come from the TOML: only from the environment, or from a file named by ``<NAME>_FILE`` (systemd credentials,
container secrets). A secret key found in the TOML is itself a problem.

Environment overrides, for operators and for our checks:

=============================  =========================================================
``BRIDGE_DATA_DIR``            where the SQLite database and other state live
``BRIDGE_DATABASE_URL``        ``postgresql://user:pass@host/db`` or ``sqlite:///path``
``BRIDGE_HTTP_PORT``           the HTTP port (webhooks, health, metrics)
``BRIDGE_MLLP_PORT``           the HL7 MLLP listener port (``connectors.hl7v2.port``)
``BRIDGE_LOG_FORMAT``          ``json``, ``console`` or ``auto``
=============================  =========================================================
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_DATA_DIR",
    "SECRET_NAMES",
    "EngineSettings",
    "HttpSettings",
    "LogSettings",
    "RelaySettings",
    "RetentionSettings",
    "SandboxSettings",
    "Settings",
    "load_settings",
    "normalise_database_url",
    "redact_url",
]

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bridge.errors import ConfigError, ConfigProblem

#: Where state lives when neither the TOML nor ``BRIDGE_DATA_DIR`` says otherwise: a folder in
#: the working directory, so a first run never writes somewhere surprising.
DEFAULT_DATA_DIR = Path(".bridge")

#: Secrets read from the environment (or ``<NAME>_FILE``). Their values feed the log redactor.
SECRET_NAMES: tuple[str, ...] = (
    "BRIDGE_WHATSAPP_TOKEN",
    "BRIDGE_WHATSAPP_APP_SECRET",
    "BRIDGE_WHATSAPP_VERIFY_TOKEN",
    "BRIDGE_FHIR_TOKEN",
    "BRIDGE_FHIR_CLIENT_SECRET",
    "BRIDGE_FHIR_PRIVATE_KEY",
    "BRIDGE_FHIR_SUBSCRIPTION_SECRET",
    "BRIDGE_ADMIN_TOKENS",
    "BRIDGE_PORTAL_SIGNING_KEY",
    "BRIDGE_TOKEN_SIGNING_KEY",
    "BRIDGE_DATA_KEY",
)

#: A TOML value that *names* a secret (``token_secret = "BRIDGE_FHIR_TOKEN"``) is fine.
_SECRET_REFERENCE = re.compile(r"BRIDGE_[A-Z0-9_]+")
#: Environment variables read as secrets besides :data:`SECRET_NAMES`: any ``BRIDGE_*`` name
#: ending like a secret, so a site can name one per FHIR subscription.
_SECRET_VARIABLE = re.compile(r"BRIDGE_[A-Z0-9_]*(SECRET|TOKEN|KEY|PASSWORD)S?")
#: Key fragments that mark a TOML value as a secret that belongs in the environment instead.
_SECRET_KEY_HINTS = ("token", "secret", "password", "private_key")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpSettings(_Section):
    """The HTTP listener: webhooks, FHIR notifications, health, metrics."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    #: request bodies above this size get 413 (Meta sends up to 3 MB)
    max_body_bytes: int = Field(default=3 * 1024 * 1024, ge=1024)
    #: a request body must arrive within this many seconds (slow clients get 408)
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    #: whether /metrics needs an admin token even on loopback
    metrics_require_token: bool = False


class LogSettings(_Section):
    """Logging: JSON lines for journald and log shippers, readable text on a terminal."""

    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class RelaySettings(_Section):
    """The outbox relay: how often it looks for due rows and how it retries."""

    tick_seconds: float = Field(default=0.2, gt=0, le=60)
    batch_size: int = Field(default=200, ge=1, le=5000)
    lease_seconds: float = Field(default=60.0, ge=1)
    max_attempts: int = Field(default=8, ge=1, le=100)
    backoff_base_seconds: float = Field(default=5.0, gt=0)
    backoff_max_seconds: float = Field(default=3600.0, gt=0)
    concurrency: int = Field(default=64, ge=1, le=1024)


class RetentionSettings(_Section):
    """How long raw payloads and message bodies are kept; audit metadata is kept."""

    raw_days: int = Field(default=30, ge=1)
    purge_interval_hours: float = Field(default=6.0, gt=0)


class EngineSettings(_Section):
    """What the engine plans and how it talks to patients (``[engine]``)."""

    #: reminders this many hours before the appointment
    reminder_offsets_hours: tuple[float, ...] = (72.0, 24.0)
    #: per-service overrides of the offsets, keyed by the service display text or code
    service_offsets_hours: dict[str, tuple[float, ...]] = Field(default_factory=dict)
    #: no messages between these clinic-local times; a due time inside is moved to the end
    quiet_hours_start: str = Field(default="20:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    quiet_hours_end: str = Field(default="08:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    #: a reminder due less than this before the appointment is not sent at all
    min_lead_minutes: float = Field(default=60.0, ge=0)
    #: spread a clinic-day's reminders over this many minutes (stable per appointment)
    jitter_minutes: float = Field(default=20.0, ge=0)
    #: the language of patients whose language is unknown
    default_language: str = "es"
    #: at most one results notice per patient in this window
    results_window_hours: float = Field(default=24.0, ge=0)
    #: how long a portal link token stays valid
    portal_token_hours: float = Field(default=72.0, gt=0)
    #: replies the bot does not understand before a person takes over
    unknown_replies_before_handoff: int = Field(default=3, ge=1)
    #: ask "are you sure?" before cancelling in the EHR
    ask_before_cancel: bool = True
    #: how many free slots to offer when a patient reschedules (WhatsApp lists hold 10)
    slots_offered: int = Field(default=5, ge=1, le=10)
    #: JSON webhook told when a conversation needs a person (empty: none)
    handoff_webhook_url: str = ""
    #: send a 1-5 rating after an appointment is fulfilled
    survey_enabled: bool = False
    #: folder of site mappings; empty uses the packaged defaults
    mappings_dir: str = ""


class SandboxSettings(_Section):
    """The embedded WhatsApp sandbox, started with the daemon when enabled."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)


class Settings(_Section):
    """Everything the daemon needs, validated.

    ``connectors`` lists the connector plugins to enable by name; each has its own section under
    ``plugin_sections["connectors.<name>"]``, validated by the plugin itself. ``secrets`` holds
    the values of :data:`SECRET_NAMES` that are set; it is excluded from ``repr``.
    """

    source: str = "defaults"
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""
    timezone: str = "UTC"
    connectors: tuple[str, ...] = ()
    channel: str = "whatsapp"
    migrate_on_start: bool = True
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    relay: RelaySettings = RelaySettings()
    engine: EngineSettings = EngineSettings()
    retention: RetentionSettings = RetentionSettings()
    sandbox: SandboxSettings = SandboxSettings()
    plugin_sections: dict[str, dict[str, Any]] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict, repr=False)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as America/Bogota)"
            ) from None
        return value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        if value:
            normalise_database_url(value)
        return value

    @field_validator("connectors")
    @classmethod
    def _listed_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a connector is listed twice")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> Settings:
        if self.relay.backoff_max_seconds < self.relay.backoff_base_seconds:
            raise ValueError("relay.backoff_max_seconds must be at least backoff_base_seconds")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the async driver the bridge uses."""
        return normalise_database_url(self.database_url or f"sqlite:///{self.data_dir}/bridge.db")

    def plugin_section(self, path: str) -> dict[str, Any]:
        """Return the raw TOML table at ``path`` (``connectors.hl7v2``, ``whatsapp``)."""
        return dict(self.plugin_sections.get(path, {}))


def normalise_database_url(url: str) -> str:
    """Pick the async driver for a plain database URL.

    ``postgresql://`` becomes ``postgresql+asyncpg://``, ``sqlite:///`` becomes
    ``sqlite+aiosqlite:///``; a URL that already names a driver is kept.

    Raises:
        ValueError: the scheme is neither PostgreSQL nor SQLite.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("expected a URL such as postgresql://user@host/db or sqlite:///path")
    base = scheme.split("+", 1)[0].lower()
    if base in ("postgresql", "postgres"):
        driver = scheme.split("+", 1)[1] if "+" in scheme else "asyncpg"
        return f"postgresql+{driver}://{rest}"
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    raise ValueError(f"unsupported database scheme {scheme!r}: use postgresql:// or sqlite:///")


def redact_url(url: str) -> str:
    """Hide the password in a database URL, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


#: Top-level keys of ``[bridge]`` and the sections the core validates itself.
_CORE_SECTIONS = ("http", "log", "relay", "retention", "sandbox", "engine")
#: Sections that belong to plugins: kept raw here, validated by ``Plugin.from_config``.
_PLUGIN_SECTIONS = ("whatsapp", "connectors", "security")


def load_settings(config_path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file (if any), apply environment overrides and validate everything.

    Args:
        config_path: the ``--config`` file, or None for the embedded defaults.
        env: the environment; ``os.environ`` when None (the one place it is read).

    Raises:
        ConfigError: every problem found, each with its file, key and reason.
    """
    env = os.environ if env is None else env
    problems: list[ConfigProblem] = []
    source = str(config_path) if config_path else "defaults"
    raw: dict[str, Any] = {}
    if config_path is not None:
        raw = _read_toml(config_path, problems)

    data: dict[str, Any] = {"source": source}
    bridge_table = raw.pop("bridge", {})
    if not isinstance(bridge_table, dict):
        problems.append(ConfigProblem(source, "bridge", "must be a table"))
        bridge_table = {}
    data.update(bridge_table)
    for name in _CORE_SECTIONS:
        if name in raw:
            data[name] = raw.pop(name)
    plugin_sections: dict[str, dict[str, Any]] = {}
    for name in _PLUGIN_SECTIONS:
        table = raw.pop(name, None)
        if table is None:
            continue
        if not isinstance(table, dict):
            problems.append(ConfigProblem(source, name, "must be a table"))
            continue
        if name == "connectors":
            for conn, section in table.items():
                plugin_sections[f"connectors.{conn}"] = section if isinstance(section, dict) else {}
        else:
            plugin_sections[name] = table
    for unknown in raw:
        problems.append(
            ConfigProblem(source, unknown, "unknown section; see config/bridge.example.toml")
        )
    for path, section in plugin_sections.items():
        _find_secret_keys(source, path, section, problems)
    _find_secret_keys(source, "bridge", bridge_table, problems)

    _apply_env_overrides(env, data, plugin_sections, problems)
    data["plugin_sections"] = plugin_sections
    data["secrets"] = _read_secrets(env, problems)
    if "BRIDGE_ADMIN_TOKENS" in data["secrets"]:
        from bridge.api.admin import parse_admin_tokens

        problems.extend(parse_admin_tokens(data["secrets"]["BRIDGE_ADMIN_TOKENS"])[1])
    if "BRIDGE_DATA_KEY" in data["secrets"]:
        from bridge.store.sealing import parse_key

        try:
            parse_key(data["secrets"]["BRIDGE_DATA_KEY"])
        except ValueError as exc:
            problems.append(ConfigProblem("environment", "BRIDGE_DATA_KEY", str(exc)))

    settings: Settings | None = None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "bridge"
            if key in ("timezone", "database_url", "connectors", "data_dir"):
                key = f"bridge.{key}"
            bare = key.removeprefix("bridge.")
            where = "environment" if _env_set(env, bare) else source
            problems.append(ConfigProblem(where, key, err["msg"].removeprefix("Value error, ")))
    if problems:
        raise ConfigError(problems)
    assert settings is not None  # noqa: S101 - no problems means validation succeeded
    return settings


#: environment variable → settings key it overrides
_ENV_KEYS = {
    "BRIDGE_DATA_DIR": "data_dir",
    "BRIDGE_DATABASE_URL": "database_url",
    "BRIDGE_HTTP_PORT": "http.port",
    "BRIDGE_LOG_FORMAT": "log.format",
}


def _env_set(env: Mapping[str, str], key: str) -> bool:
    return any(env.get(name) for name, target in _ENV_KEYS.items() if target == key)


def _read_toml(path: Path, problems: list[ConfigProblem]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append(ConfigProblem(str(path), "-", "file not found"))
    except PermissionError:
        problems.append(ConfigProblem(str(path), "-", "permission denied"))
    except IsADirectoryError:
        problems.append(ConfigProblem(str(path), "-", "is a directory, expected a TOML file"))
    except tomllib.TOMLDecodeError as exc:
        problems.append(ConfigProblem(str(path), "-", f"not valid TOML: {exc}"))
    return {}


def _find_secret_keys(
    source: str, path: str, table: Mapping[str, Any], problems: list[ConfigProblem]
) -> None:
    for key, value in table.items():
        if isinstance(value, dict):
            _find_secret_keys(source, f"{path}.{key}", value, problems)
        elif (
            any(hint in key.lower() for hint in _SECRET_KEY_HINTS)
            and not key.endswith(("_file", "_env", "_header", "_name"))
            and not (isinstance(value, str) and _SECRET_REFERENCE.fullmatch(value))
        ):
            problems.append(
                ConfigProblem(
                    source,
                    f"{path}.{key}",
                    "secrets are not read from the config file; set the matching BRIDGE_* "
                    "environment variable or its _FILE variant (see README, Secrets)",
                )
            )


def _apply_env_overrides(
    env: Mapping[str, str],
    data: dict[str, Any],
    plugin_sections: dict[str, dict[str, Any]],
    problems: list[ConfigProblem],
) -> None:
    if value := env.get("BRIDGE_DATA_DIR"):
        data["data_dir"] = value
    if value := env.get("BRIDGE_DATABASE_URL"):
        data["database_url"] = value
    if value := env.get("BRIDGE_LOG_FORMAT"):
        data.setdefault("log", {})
        if isinstance(data["log"], dict):
            data["log"] = {**data["log"], "format": value}
    if value := env.get("BRIDGE_HTTP_PORT"):
        port = _port(value, "BRIDGE_HTTP_PORT", problems)
        if port is not None:
            http = data.get("http", {})
            data["http"] = {**(http if isinstance(http, dict) else {}), "port": port}
    if value := env.get("BRIDGE_MLLP_PORT"):
        port = _port(value, "BRIDGE_MLLP_PORT", problems)
        if port is not None:
            section = plugin_sections.setdefault("connectors.hl7v2", {})
            section["port"] = port


def _port(value: str, name: str, problems: list[ConfigProblem]) -> int | None:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        problems.append(ConfigProblem("environment", name, f"{value!r} is not a port (0-65535)"))
        return None
    return port


def _read_secrets(env: Mapping[str, str], problems: list[ConfigProblem]) -> dict[str, str]:
    secrets: dict[str, str] = {}
    extra = {
        n.removesuffix("_FILE") for n in env if _SECRET_VARIABLE.fullmatch(n.removesuffix("_FILE"))
    }
    for name in sorted(set(SECRET_NAMES) | extra):
        value = env.get(name)
        file_name = env.get(f"{name}_FILE")
        if value and file_name:
            problems.append(
                ConfigProblem("environment", name, f"set either {name} or {name}_FILE, not both")
            )
            continue
        if file_name:
            path = Path(file_name)
            try:
                mode = path.stat().st_mode
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(
                    ConfigProblem("environment", f"{name}_FILE", f"cannot read: {exc.strerror}")
                )
                continue
            if mode & stat.S_IROTH:
                problems.append(
                    ConfigProblem(
                        "environment",
                        f"{name}_FILE",
                        "secret file is world-readable; chmod 600 (or 640) it",
                    )
                )
        if value:
            secrets[name] = value
    return secrets
