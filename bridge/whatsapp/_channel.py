"""The WhatsApp channel plugin: config, limits and the Graph client behind the Channel port.

``WhatsAppChannel`` is what ``bridge.plugins`` loads for ``[bridge] channel = "whatsapp"``
(entry point ``bridge.whatsapp:WhatsAppChannel``). It validates its ``[whatsapp]`` section all
at once, sends through :class:`~bridge.whatsapp._client.GraphClient` after the limits of
:mod:`bridge.whatsapp._limits`, and verifies and parses webhooks with
:mod:`bridge.whatsapp._webhook`.

Config (``[whatsapp]``; secrets only from the environment)::

    base_url = "http://127.0.0.1:8081"   # the sandbox; https://graph.facebook.com for Meta
    api_version = "v25.0"
    phone_number_id = "109876543210987"
    waba_id = "102345678901234"
    rate_per_second = 80                  # Meta: 80, up to 1000 after the upgrade
    patient_spacing_seconds = 6
    tier_limit = 250                      # unique patients per 24 h; omit for unlimited
    timeout_seconds = 10
    retry_attempts = 3
    max_connections = 256
"""

from __future__ import annotations

__all__ = [
    "SANDBOX_APP_SECRET",
    "SANDBOX_TOKEN",
    "SignatureMismatch",
    "WhatsAppChannel",
    "WhatsAppSettings",
]

import asyncio
import re
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self
from urllib.parse import urlsplit

import httpx
from starlette.routing import BaseRoute

from bridge.domain import Event, Translation
from bridge.errors import BridgeError, ChannelThrottled, ConfigError, ConfigProblem
from bridge.ports import Clock, EventSink, Notification, PluginContext, SendReceipt
from bridge.whatsapp._client import GraphClient
from bridge.whatsapp._limits import CustomerWindow, SendLimits, Sleep
from bridge.whatsapp._payloads import build_message
from bridge.whatsapp._webhook import SIGNATURE_HEADER, parse_webhook_body, verify_signature

#: The embedded sandbox's documented offline values (bridge.sandbox._config); they only open
#: the sandbox, so they are used only when ``base_url`` is a loopback address.
SANDBOX_TOKEN = "sandbox-token"  # noqa: S105
SANDBOX_APP_SECRET = "sandbox-app-secret"  # noqa: S105
_SANDBOX_PHONE_NUMBER_ID = "109876543210987"
_SANDBOX_WABA_ID = "102345678901234"
_DEFAULT_BASE_URL = "http://127.0.0.1:8081"
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
_API_VERSION = re.compile(r"v\d{1,3}\.\d{1,2}")
_GRAPH_ID = re.compile(r"\d{1,32}")
_KEYS = frozenset(
    {
        "base_url",
        "api_version",
        "phone_number_id",
        "waba_id",
        "rate_per_second",
        "patient_spacing_seconds",
        "tier_limit",
        "timeout_seconds",
        "retry_attempts",
        "max_connections",
    }
)


class SignatureMismatch(BridgeError, ValueError):
    """A webhook body's ``X-Hub-Signature-256`` is missing or wrong: nothing may be kept."""

    def __init__(self) -> None:
        super().__init__("webhook signature missing or invalid")


@dataclass(frozen=True, kw_only=True, slots=True)
class WhatsAppSettings:
    """The validated ``[whatsapp]`` section (see the module docstring for the keys)."""

    base_url: str = _DEFAULT_BASE_URL
    api_version: str = "v25.0"
    phone_number_id: str = _SANDBOX_PHONE_NUMBER_ID
    waba_id: str = _SANDBOX_WABA_ID
    rate_per_second: float = 80.0
    patient_spacing_seconds: float = 6.0
    tier_limit: int | None = None
    timeout_seconds: float = 10.0
    retry_attempts: int = 3
    max_connections: int = 256

    @property
    def is_loopback(self) -> bool:
        """True when ``base_url`` is this machine (the sandbox)."""
        return urlsplit(self.base_url).hostname in _LOOPBACK


def _number(
    section: Mapping[str, Any],
    key: str,
    default: float,
    low: float,
    high: float,
    problems: list[ConfigProblem],
    path: str,
    *,
    integer: bool = False,
    low_open: bool = False,
) -> float:
    value = section.get(key, default)
    kind_ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not kind_ok:
        problems.append(
            ConfigProblem(
                "config", f"{path}.{key}", f"must be {'an integer' if integer else 'a number'}"
            )
        )
        return default
    too_low = value <= low if low_open else value < low
    if too_low or value > high:
        left = "(" if low_open else "["
        problems.append(
            ConfigProblem("config", f"{path}.{key}", f"must be within {left}{low:g}, {high:g}]")
        )
        return default
    return float(value)


def _settings(
    section: Mapping[str, Any], path: str, problems: list[ConfigProblem]
) -> WhatsAppSettings:
    for key in sorted(set(section) - _KEYS):
        problems.append(
            ConfigProblem(
                "config", f"{path}.{key}", f"unknown key; known: {', '.join(sorted(_KEYS))}"
            )
        )
    base_url = section.get("base_url", _DEFAULT_BASE_URL)
    loopback = False
    if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https"):
        problems.append(ConfigProblem("config", f"{path}.base_url", "must be an http(s) URL"))
        base_url = _DEFAULT_BASE_URL
    else:
        parts = urlsplit(base_url)
        loopback = parts.hostname in _LOOPBACK
        if parts.scheme == "http" and not loopback:
            problems.append(
                ConfigProblem(
                    "config", f"{path}.base_url", "plain http is only allowed to a loopback address"
                )
            )
    api_version = section.get("api_version", "v25.0")
    if not isinstance(api_version, str) or not _API_VERSION.fullmatch(api_version):
        problems.append(ConfigProblem("config", f"{path}.api_version", "must look like v25.0"))
        api_version = "v25.0"
    ids: dict[str, str] = {}
    for key, sandbox_default in (
        ("phone_number_id", _SANDBOX_PHONE_NUMBER_ID),
        ("waba_id", _SANDBOX_WABA_ID),
    ):
        value = section.get(key)
        if value is None:
            if not loopback:
                problems.append(
                    ConfigProblem(
                        "config", f"{path}.{key}", "required when base_url is not the sandbox"
                    )
                )
            ids[key] = sandbox_default
        elif not isinstance(value, str | int) or not _GRAPH_ID.fullmatch(str(value)):
            problems.append(ConfigProblem("config", f"{path}.{key}", "must be a numeric Graph id"))
            ids[key] = sandbox_default
        else:
            ids[key] = str(value)
    tier: int | None = None
    if section.get("tier_limit") is not None:
        tier = int(_number(section, "tier_limit", 250, 1, 10_000_000, problems, path, integer=True))
    return WhatsAppSettings(
        base_url=base_url,
        api_version=api_version,
        phone_number_id=ids["phone_number_id"],
        waba_id=ids["waba_id"],
        rate_per_second=_number(section, "rate_per_second", 80.0, 0, 1000, problems, path),
        patient_spacing_seconds=_number(
            section, "patient_spacing_seconds", 6.0, 0, 3600, problems, path
        ),
        tier_limit=tier,
        timeout_seconds=_number(
            section, "timeout_seconds", 10.0, 0, 120, problems, path, low_open=True
        ),
        retry_attempts=int(
            _number(section, "retry_attempts", 3, 1, 5, problems, path, integer=True)
        ),
        max_connections=int(
            _number(section, "max_connections", 256, 1, 4096, problems, path, integer=True)
        ),
    )


class WhatsAppChannel:
    """The WhatsApp Cloud API channel (implements :class:`bridge.ports.Channel`).

    Args:
        settings: the validated section.
        clock: the clock port (limits, webhook receive times).
        token: Graph bearer token.
        app_secret: Meta app secret for webhook signatures; None accepts unsigned webhooks
            (only allowed against the sandbox).
        verify_token: the webhook verification token; None refuses every GET verification.
        transport: an httpx transport for the Graph client (tests); default aiohttp.
        sleep: how the rate limiter waits (tests pass one that moves their fake clock).

    Attributes:
        limits: rate, patient spacing and tier of this phone-number id.
        window: the 24-hour window rule, for the engine's decision before it plans a session
            message.
    """

    name = "whatsapp"

    def __init__(
        self,
        settings: WhatsAppSettings,
        *,
        clock: Clock,
        token: str,
        app_secret: bytes | None,
        verify_token: str | None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.app_secret = app_secret
        self.verify_token = verify_token
        self.limits = SendLimits(
            clock,
            rate_per_second=settings.rate_per_second,
            patient_spacing=settings.patient_spacing_seconds,
            tier_limit=settings.tier_limit,
            sleep=sleep,
        )
        self.window = CustomerWindow()
        self.client = GraphClient(
            settings.base_url,
            settings.api_version,
            settings.phone_number_id,
            settings.waba_id,
            token,
            timeout=settings.timeout_seconds,
            transport=transport,
            attempts=settings.retry_attempts,
            max_connections=settings.max_connections,
        )

    @classmethod
    def from_config(cls, section: Mapping[str, Any], context: PluginContext) -> Self:
        """Build the channel from its ``[whatsapp]`` section and secrets.

        Secrets: ``BRIDGE_WHATSAPP_TOKEN`` (required unless ``base_url`` is the loopback
        sandbox), ``BRIDGE_WHATSAPP_APP_SECRET`` (same), ``BRIDGE_WHATSAPP_VERIFY_TOKEN``
        (optional: without it, GET verification answers 403).

        Raises:
            bridge.errors.ConfigError: every problem of the section at once.
        """
        path = context.section_path or "whatsapp"
        problems: list[ConfigProblem] = []
        settings = _settings(section, path, problems)
        token = context.secrets.get("BRIDGE_WHATSAPP_TOKEN")
        app_secret = context.secrets.get("BRIDGE_WHATSAPP_APP_SECRET")
        verify_token = context.secrets.get("BRIDGE_WHATSAPP_VERIFY_TOKEN") or None
        if settings.rate_per_second == 0 and not settings.is_loopback:
            problems.append(
                ConfigProblem(
                    path,
                    f"{path}.rate_per_second",
                    "0 (no local limit) is only allowed against the loopback sandbox",
                )
            )
        if settings.is_loopback:
            token = token or SANDBOX_TOKEN
            app_secret = app_secret or SANDBOX_APP_SECRET
        else:
            for name, value in (
                ("BRIDGE_WHATSAPP_TOKEN", token),
                ("BRIDGE_WHATSAPP_APP_SECRET", app_secret),
            ):
                if not value:
                    problems.append(
                        ConfigProblem(
                            "environment", name, "required when base_url is not the sandbox"
                        )
                    )
        if problems:
            raise ConfigError(problems)
        return cls(
            settings,
            clock=context.clock,
            token=token or "",
            app_secret=app_secret.encode() if app_secret else None,
            verify_token=verify_token,
        )

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """Register the Graph client's pool for closing when ``exit_stack`` unwinds."""
        await self.client.start(exit_stack)

    def routes(self, sink: EventSink) -> list[BaseRoute]:
        """The webhook endpoint ``/webhooks/whatsapp`` (verification GET, signed POSTs)."""
        from bridge.whatsapp._routes import webhook_routes

        return list(
            webhook_routes(self, sink, verify_token=self.verify_token, app_secret=self.app_secret)
        )

    async def send(self, notification: Notification) -> SendReceipt:
        """Check the message, wait for the limits, send it, and feed errors back to the limits.

        Raises:
            bridge.errors.MessageRejected: a Meta limit is broken (nothing sent, no slot used).
            bridge.whatsapp.SendHeld: patient spacing/back-off or the tier holds it; reschedule
                for ``hold_until`` without counting an attempt.
            bridge.errors.SendError: from the Graph error table.
        """
        payload = build_message(notification)
        patient = notification.to
        await self.limits.admit(patient, business_initiated=notification.kind == "template")
        try:
            receipt = await self.client.send_payload(payload)
        except ChannelThrottled as exc:
            if exc.provider_code == 130429:
                self.limits.on_throughput_error(exc.retry_after or 1.0)
            elif exc.provider_code == 131056:
                until = self.limits.on_pair_limit(patient)
                wait = max(0.0, (until - self.clock.now()).total_seconds())
                raise ChannelThrottled(
                    exc.code,
                    "pair rate limit; this patient backs off",
                    provider_code=131056,
                    retry_after=wait,
                ) from exc
            raise
        self.limits.on_success(patient)
        return receipt

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[Event]:
        """Verify the signature (when an app secret is set) and translate the raw body.

        Raises:
            SignatureMismatch: the signature header is missing or wrong.
        """
        return list(self.translate(headers, body).events)

    def translate(
        self, headers: Mapping[str, str], body: bytes, *, received_at: datetime | None = None
    ) -> Translation:
        """Like :meth:`parse_webhook` but returns the whole translation, problems included.

        Raises:
            SignatureMismatch: the signature header is missing or wrong.
        """
        if self.app_secret is not None:
            header = _header(headers, SIGNATURE_HEADER)
            if not verify_signature(self.app_secret, body, header):
                raise SignatureMismatch
        return parse_webhook_body(body, received_at=received_at or self.clock.now())


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None
