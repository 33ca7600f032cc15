"""The ``[connectors.fhir]`` config section: keys, defaults, and validation that lists every problem.

``CONFIG_KEYS`` is the documentation the lead copies into the example config. Secrets are never
in the TOML: keys ending in ``_secret`` name an entry of ``PluginContext.secrets``.
"""

from __future__ import annotations

__all__ = ["CONFIG_KEYS", "FhirSettings", "SubscriptionSettings", "parse_settings"]

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.errors import ConfigError, ConfigProblem
from bridge.ports import PluginContext

from ._auth import check_private_key

#: key → (default, meaning). Subscriptions are ``[[connectors.fhir.subscriptions]]`` tables.
CONFIG_KEYS: dict[str, tuple[Any, str]] = {
    "base_url": (None, "FHIR R4 base URL (required), e.g. https://ehr.example/fhir"),
    "auth": ("none", "none | bearer | smart"),
    "token_secret": ("BRIDGE_FHIR_TOKEN", "secret name of the bearer token (auth = bearer)"),
    "smart_client_id": (None, "SMART Backend Services client id (auth = smart)"),
    "smart_private_key_secret": ("BRIDGE_FHIR_PRIVATE_KEY", "secret name of the PEM key"),
    "smart_alg": ("RS384", "RS384 (RSA key) | ES384 (EC P-384 key)"),
    "smart_kid": (None, "key id put in the JWT header"),
    "smart_scope": (
        (
            "system/Appointment.rs system/Appointment.u system/Patient.rs system/Slot.rs "
            "system/DiagnosticReport.rs system/Task.c system/Communication.c"
        ),
        "scopes requested",
    ),
    "smart_token_url": (None, "token endpoint; discovered from .well-known when unset"),
    "tls_verify": (True, "verify TLS; false only for a test target"),
    "timeout_seconds": (10.0, "per request"),
    "retries": (3, "attempts for 429/5xx/connect errors"),
    "backoff_seconds": (0.5, "first retry wait, doubled each time; Retry-After wins"),
    "default_region": (None, "ISO country for national phone numbers, e.g. CO"),
    "timezone": (None, "IANA zone for date-times without offset, e.g. America/Bogota"),
    "confirm_mode": ("put", "put | patch | appointment-response"),
    "cancel_reason": ("pat-crs", "pat-crs | pat (appointment-cancellation-reason)"),
    "reschedule_mode": ("update", "update (If-Match, Task fallback) | task"),
    "record_communications": (False, "write a Communication per notification sent"),
    "poll_types": (["Appointment", "DiagnosticReport"], "resource types polled"),
    "poll_page_size": (100, "_count per page"),
    "poll_lookback_hours": (24.0, "first poll starts this far back when there is no cursor"),
    "poll_interval_seconds": (60.0, "how often the daemon polls for changes; 0 = never"),
    "notify_header": ("Authorization", "header carrying the subscription secret"),
    "notify_base_url": (None, "URL where the server reaches our /fhir/notify/{id}"),
    "subscriptions": (
        [],
        "tables: id, secret, topic | criteria, content, heartbeat_seconds, create",
    ),
}

_SUBSCRIPTION_KEYS = frozenset(
    {"id", "secret", "topic", "criteria", "content", "heartbeat_seconds", "create"}
)
_POLLABLE = frozenset({"Appointment", "DiagnosticReport", "Patient"})


@dataclass(frozen=True, kw_only=True, slots=True)
class SubscriptionSettings:
    """One notification endpoint ``/fhir/notify/{id}`` and the Subscription behind it.

    Attributes:
        id: our name for it (the path segment).
        secret: the secret value the server must send (from the secrets, never the TOML).
        topic: backport topic canonical, or None for a classic criteria subscription.
        criteria: classic R4 criteria (``Appointment?status=booked``).
        content: empty | id-only | full-resource (backport).
        heartbeat_seconds: expected heartbeat period; missing ones trigger a resync.
        create: create the Subscription on the server at start when none is active.
    """

    id: str
    secret: str
    topic: str | None = None
    criteria: str | None = None
    content: str = "id-only"
    heartbeat_seconds: int | None = None
    create: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class FhirSettings:
    """The validated section. Secret values are here but never in ``repr``."""

    base_url: str
    auth: str = "none"
    token: str | None = None
    smart_client_id: str | None = None
    smart_private_key: str | None = None
    smart_alg: str = "RS384"
    smart_kid: str | None = None
    smart_scope: str = str(CONFIG_KEYS["smart_scope"][0])
    smart_token_url: str | None = None
    tls_verify: bool = True
    timeout_seconds: float = 10.0
    retries: int = 3
    backoff_seconds: float = 0.5
    default_region: str | None = None
    timezone: str | None = None
    confirm_mode: str = "put"
    cancel_reason: str = "pat-crs"
    reschedule_mode: str = "update"
    record_communications: bool = False
    poll_types: tuple[str, ...] = ("Appointment", "DiagnosticReport")
    poll_page_size: int = 100
    poll_lookback_hours: float = 24.0
    poll_interval_seconds: float = 60.0
    notify_header: str = "Authorization"
    notify_base_url: str | None = None
    subscriptions: tuple[SubscriptionSettings, ...] = ()

    def __repr__(self) -> str:
        return f"FhirSettings(base_url={self.base_url!r}, auth={self.auth!r})"

    @property
    def known_topics(self) -> frozenset[str] | None:
        """Topics we subscribed to; None when no backport subscription is configured."""
        topics = frozenset(s.topic for s in self.subscriptions if s.topic)
        return topics or None


class _Collector:
    def __init__(self, section: Mapping[str, Any], context: PluginContext) -> None:
        self.section = section
        self.context = context
        self.problems: list[ConfigProblem] = []

    def problem(self, key: str, reason: str) -> None:
        self.problems.append(ConfigProblem("config", f"{self.context.section_path}.{key}", reason))

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.section.get(key, default)
        if value is None:
            return None
        # bool is an int subclass: refuse true where a number is wanted, and 1 for a flag
        wrong_bool = isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,)
        )
        if wrong_bool or not isinstance(value, kind):
            self.problem(key, f"must be {_kind_name(kind)}, got {type(value).__name__}")
            return default
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        default = str(CONFIG_KEYS[key][0])
        value = self.get(key, str, default)
        if value not in choices:
            self.problem(key, f"must be one of {', '.join(choices)}")
            return default
        return str(value)

    def secret(self, key: str, default_name: str, needed: bool) -> str | None:
        name = self.get(key, str, default_name)
        value = self.context.secrets.get(str(name)) if name else None
        if needed and not value:
            self.problem(key, f"secret {name} is not set (environment or *_FILE)")
        return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _subscriptions(c: _Collector) -> tuple[SubscriptionSettings, ...]:
    raw = c.get("subscriptions", list, [])
    found: list[SubscriptionSettings] = []
    seen: set[str] = set()
    for index, table in enumerate(raw or []):
        key = f"subscriptions[{index}]"
        if not isinstance(table, Mapping):
            c.problem(key, "must be a table")
            continue
        for unknown in sorted(set(table) - _SUBSCRIPTION_KEYS):
            c.problem(f"{key}.{unknown}", "unknown key")
        sub_id = table.get("id")
        if not isinstance(sub_id, str) or not sub_id.replace("-", "").replace("_", "").isalnum():
            c.problem(f"{key}.id", "must be letters, digits, - or _")
            continue
        if sub_id in seen:
            c.problem(f"{key}.id", f"{sub_id} is used twice")
        seen.add(sub_id)
        secret_name = table.get("secret", "BRIDGE_FHIR_SUBSCRIPTION_SECRET")
        secret = c.context.secrets.get(str(secret_name))
        if not secret:
            c.problem(f"{key}.secret", f"secret {secret_name} is not set (environment or *_FILE)")
        topic, criteria = table.get("topic"), table.get("criteria")
        if (topic is None) == (criteria is None):
            c.problem(key, "set exactly one of topic (backport) or criteria (classic)")
        content = table.get("content", "id-only")
        if content not in ("empty", "id-only", "full-resource"):
            c.problem(f"{key}.content", "must be empty, id-only or full-resource")
        heartbeat = table.get("heartbeat_seconds")
        if heartbeat is not None and (not isinstance(heartbeat, int) or heartbeat <= 0):
            c.problem(f"{key}.heartbeat_seconds", "must be a positive integer")
        create = table.get("create", False)
        if not isinstance(create, bool):
            c.problem(f"{key}.create", "must be true or false")
        found.append(
            SubscriptionSettings(
                id=sub_id,
                secret=secret or "",
                topic=str(topic) if topic is not None else None,
                criteria=str(criteria) if criteria is not None else None,
                content=str(content),
                heartbeat_seconds=heartbeat if isinstance(heartbeat, int) else None,
                create=create is True,
            )
        )
    return tuple(found)


def _url(c: _Collector, key: str, required: bool) -> str | None:
    value = c.get(key, str)
    if value is None:
        if required:
            c.problem(key, "is required (the FHIR R4 base URL)")
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        c.problem(key, "must be an http(s) URL")
        return None
    return str(value).rstrip("/")


def parse_settings(section: Mapping[str, Any], context: PluginContext) -> FhirSettings:
    """Validate ``section`` and return settings, or raise one ConfigError listing every problem.

    Raises:
        bridge.errors.ConfigError: keys prefixed by ``context.section_path``.
    """
    c = _Collector(section, context)
    for unknown in sorted(set(section) - set(CONFIG_KEYS)):
        c.problem(unknown, "unknown key")
    base_url = _url(c, "base_url", required=True)
    auth = c.choice("auth", ("none", "bearer", "smart"))
    token = c.secret("token_secret", "BRIDGE_FHIR_TOKEN", needed=auth == "bearer")
    alg = c.choice("smart_alg", ("RS384", "ES384"))
    client_id = c.get("smart_client_id", str)
    key = c.secret("smart_private_key_secret", "BRIDGE_FHIR_PRIVATE_KEY", needed=auth == "smart")
    if auth == "smart":
        if not client_id:
            c.problem("smart_client_id", "is required with auth = smart")
        if key:
            why = check_private_key(key, alg)
            if why:
                c.problem("smart_private_key_secret", f"the key {why}")
    region = c.get("default_region", str)
    if region is not None and not (len(region) == 2 and region.isalpha()):
        c.problem("default_region", "must be a 2-letter ISO country code")
        region = None
    zone = c.get("timezone", str)
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            c.problem("timezone", "is not an IANA time zone")
    poll_types = c.get("poll_types", list, list(CONFIG_KEYS["poll_types"][0]))
    for name in poll_types:
        if name not in _POLLABLE:
            c.problem("poll_types", f"{name!r} is not one of {', '.join(sorted(_POLLABLE))}")
    numbers = {
        "timeout_seconds": c.get("timeout_seconds", (int, float), 10.0),
        "backoff_seconds": c.get("backoff_seconds", (int, float), 0.5),
        "poll_lookback_hours": c.get("poll_lookback_hours", (int, float), 24.0),
        "retries": c.get("retries", int, 3),
        "poll_page_size": c.get("poll_page_size", int, 100),
    }
    for name, value in numbers.items():
        if value is not None and value <= 0:
            c.problem(name, "must be positive")
    settings = FhirSettings(
        base_url=base_url or "http://invalid",
        auth=auth,
        token=token,
        smart_client_id=client_id,
        smart_private_key=key,
        smart_alg=alg,
        smart_kid=c.get("smart_kid", str),
        smart_scope=c.get("smart_scope", str, CONFIG_KEYS["smart_scope"][0]),
        smart_token_url=_url(c, "smart_token_url", required=False),
        tls_verify=c.get("tls_verify", bool, True),
        timeout_seconds=float(numbers["timeout_seconds"] or 10.0),
        retries=int(numbers["retries"] or 3),
        backoff_seconds=float(numbers["backoff_seconds"] or 0.5),
        default_region=region.upper() if region else None,
        timezone=zone,
        confirm_mode=c.choice("confirm_mode", ("put", "patch", "appointment-response")),
        cancel_reason=c.choice("cancel_reason", ("pat-crs", "pat")),
        reschedule_mode=c.choice("reschedule_mode", ("update", "task")),
        record_communications=c.get("record_communications", bool, False),
        poll_types=tuple(str(t) for t in poll_types if t in _POLLABLE),
        poll_page_size=int(numbers["poll_page_size"] or 100),
        poll_lookback_hours=float(numbers["poll_lookback_hours"] or 24.0),
        poll_interval_seconds=_poll_interval(c),
        notify_header=c.get("notify_header", str, "Authorization"),
        notify_base_url=_url(c, "notify_base_url", required=False),
        subscriptions=_subscriptions(c),
    )
    if any(s.create for s in settings.subscriptions) and settings.notify_base_url is None:
        c.problem("notify_base_url", "is required when a subscription has create = true")
    if c.problems:
        raise ConfigError(c.problems)
    return settings


def _poll_interval(c: Any) -> float:
    value = c.get("poll_interval_seconds", (int, float), 60.0)
    if value is None:
        return 60.0
    if value < 0:
        c.problem("poll_interval_seconds", "must be 0 (never) or positive")
    return float(value)
