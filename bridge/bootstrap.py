"""Wiring: build every component from :class:`bridge.config.Settings` and start it.

Dependencies are injected through constructors here and nowhere else (STYLE.md §2); no module
does I/O at import. :func:`bootstrap` pushes every component's cleanup onto one
``AsyncExitStack``, so shutdown is the stack unwinding in reverse order: connectors stop taking
messages, the inbox writer drains, the database closes.
"""

from __future__ import annotations

__all__ = ["Bridge", "MeasuredSink", "bootstrap", "data_cipher", "is_loopback", "open_database"]

import ipaddress
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from structlog.typing import FilteringBoundLogger

from bridge.api.admin import AdminTokens, admin_routes, parse_admin_tokens
from bridge.api.app import Readiness, create_app
from bridge.config import Settings
from bridge.domain import InboundMessage, IngestOutcome
from bridge.engine.engine import Engine
from bridge.engine.processor import EventProcessor
from bridge.engine.relay import Relay
from bridge.errors import ConfigError, ConfigProblem, ListenerUnavailable, StoreUnavailable
from bridge.metrics import Metrics
from bridge.plugins import CHANNELS, CONNECTORS, load_plugin
from bridge.ports import Channel, Clock, Connector, EventSink, PluginContext, SystemClock
from bridge.store import AuditLog, Database, InboxWriter, SqlOutbox
from bridge.store.data_key import ensure_data_key
from bridge.store.kv import KvState
from bridge.store.migrate import current_revision, head_revision, upgrade
from bridge.store.sealing import DATA_KEY, PLAIN, DataCipher
from bridge.store.status import purge_raw_payloads, status_summary


class MeasuredSink:
    """An :class:`EventSink` that counts outcomes and commit latency per connector."""

    def __init__(self, inner: EventSink, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    async def ingest(self, message: InboundMessage) -> IngestOutcome:
        """Delegate, then count."""
        started = time.perf_counter()
        try:
            outcome = await self._inner.ingest(message)
        except StoreUnavailable:
            self._metrics.inbound.labels(message.connector, "store_unavailable").inc()
            raise
        self._metrics.ingest_latency.labels(message.connector).observe(
            time.perf_counter() - started
        )
        self._metrics.inbound.labels(message.connector, outcome.value).inc()
        return outcome


@dataclass
class Bridge:
    """Every running component of one daemon."""

    settings: Settings
    db: Database
    clock: Clock
    metrics: Metrics
    log: FilteringBoundLogger
    inbox: InboxWriter
    sink: EventSink
    outbox: SqlOutbox
    audit: AuditLog
    relay: Relay
    processor: EventProcessor
    engine: Engine
    readiness: Readiness
    admin: AdminTokens
    connectors: dict[str, Connector] = field(default_factory=dict)
    channels: dict[str, Channel] = field(default_factory=dict)
    routes: list[BaseRoute] = field(default_factory=list)
    started_connectors: set[str] = field(default_factory=set)
    #: seals patient phones and names at rest (the identity without ``BRIDGE_DATA_KEY``)
    cipher: DataCipher = PLAIN

    def asgi_app(self) -> Any:
        """The HTTP app with health, readiness, metrics, admin and every plugin route."""
        guard = None
        http = self.settings.http
        if http.metrics_require_token or not is_loopback(http.host):

            def guard(request: Request) -> Response | None:
                auth = self.admin.authenticate(request, "read")
                return auth if isinstance(auth, Response) else None

        routes = [
            *self.routes,
            *admin_routes(
                self.admin,
                status=self._admin_status,
                retry_outbox=self._admin_retry,
                release_handoff=self._admin_release,
            ),
        ]
        return create_app(
            metrics=self.metrics,
            readiness=self.readiness,
            extra_routes=routes,
            refresh_metrics=self.refresh_metrics,
            max_body_bytes=http.max_body_bytes,
            metrics_guard=guard,
            body_timeout=http.body_timeout_seconds,
        )

    async def _admin_status(self) -> dict[str, object]:
        summary = await status_summary(self.db)
        return {
            "outbox": summary.outbox_by_state,
            "inbound": summary.inbox_by_state,
            "events": summary.events_by_state,
            "quarantined": summary.quarantined,
            "last_inbound_at": _iso(summary.last_inbound_at),
            "last_outbound_at": _iso(summary.last_outbound_at),
        }

    async def _admin_retry(self, request: Request, actor: str) -> dict[str, object]:
        row_id = int(request.path_params["row_id"])
        count = await self.outbox.retry([row_id])
        await self.audit.append(
            f"admin:{actor}", "outbox.retry", f"outbox:{row_id}", {"requeued": count}
        )
        return {"requeued": count}

    async def _admin_release(self, request: Request, actor: str) -> dict[str, object]:
        address = str(request.path_params["address"])
        await self.engine.conversations.release(address)
        await self.audit.append(
            f"admin:{actor}", "handoff.release", self.cipher.address_subject(address)
        )
        return {"released": True}

    def exposure_warnings(self) -> list[str]:
        """Doors open beyond this machine without the protection they need (logged at start)."""
        warnings = []
        http = self.settings.http
        if not is_loopback(http.host):
            if not self.admin.configured:
                warnings.append(
                    "HTTP is exposed and no BRIDGE_ADMIN_TOKENS is set: /metrics "
                    "and /admin answer 401 to everyone"
                )
            if self.settings.channel == "whatsapp" and not self.settings.secrets.get(
                "BRIDGE_WHATSAPP_APP_SECRET"
            ):
                warnings.append(
                    "HTTP is exposed and BRIDGE_WHATSAPP_APP_SECRET is not set: "
                    "webhooks cannot be authenticated"
                )
            warnings.append(
                "HTTP is exposed without TLS in the bridge: terminate TLS in a "
                "reverse proxy in front of it"
            )
        for path, section in self.settings.plugin_sections.items():
            host = str(section.get("host", "127.0.0.1"))
            if (
                path.startswith("connectors.")
                and not is_loopback(host)
                and not (section.get("tls_cert") or section.get("allow_ips"))
            ):
                warnings.append(f"{path} listens on {host} without TLS or an IP allow-list")
        return warnings

    async def refresh_metrics(self) -> None:
        """Read the gauges that live in the database."""
        summary = await status_summary(self.db)
        for state in ("pending", "leased", "sent", "failed", "dead", "cancelled", "held"):
            self.metrics.outbox_rows.labels(state).set(summary.outbox_by_state.get(state, 0))
        self.metrics.quarantine_rows.set(summary.quarantined)

    async def purge(self) -> int:
        """Retention: drop raw payloads older than ``retention.raw_days``."""
        cutoff = self.clock.now() - timedelta(days=self.settings.retention.raw_days)
        return await purge_raw_payloads(self.db, cutoff)

    async def relay_release_all(self) -> int:
        """Hand back every row this daemon's relay holds (graceful shutdown)."""
        return await self.outbox.release_all(self.relay.relay_id)

    async def reap(self) -> int:
        """Return rows with expired leases to the queue."""
        return await self.outbox.reap_expired(self.clock.now())


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses: a door only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def open_database(settings: Settings, *, migrate: bool | None = None) -> Database:
    """Connect, check reachability, and migrate (or check the schema is at head).

    Raises:
        StoreUnavailable: the database cannot be reached.
        ConfigError: the schema is behind and migration at start is off.
    """
    db = Database(settings.sqlalchemy_url)
    if not await db.ping():
        await db.dispose()
        raise StoreUnavailable(
            db.redacted_url,
            "cannot connect; check the URL, that the server runs and that the user may log in",
        )
    migrate = settings.migrate_on_start if migrate is None else migrate
    if migrate:
        await upgrade(db)
    else:
        current, head = await current_revision(db), head_revision()
        if current != head:
            await db.dispose()
            raise ConfigError(
                [
                    ConfigProblem(
                        settings.source,
                        "bridge.migrate_on_start",
                        f"database schema is at {current}, this version "
                        f"needs {head}: run 'bridge db upgrade'",
                    )
                ]
            )
    return db


def data_cipher(settings: Settings) -> DataCipher:
    """The cipher of the configured data key (``BRIDGE_DATA_KEY``), or plain storage.

    Raises:
        ConfigError: the key is not valid (``load_settings`` reports this already).
    """
    try:
        return DataCipher.from_secret(settings.secrets.get(DATA_KEY))
    except ValueError as exc:
        raise ConfigError([ConfigProblem("environment", DATA_KEY, str(exc))]) from None


def load_plugins(
    settings: Settings, clock: Clock, db: Database | None = None
) -> tuple[dict[str, Connector], dict[str, Channel]]:
    """Build every enabled connector and the channel; all config problems are raised together.

    Raises:
        ConfigError: problems in any plugin's section, all of them.
        bridge.errors.PluginError: a plugin is missing, broken or does not meet its Protocol.
    """
    problems: list[ConfigProblem] = []
    connectors: dict[str, Connector] = {}
    channels: dict[str, Channel] = {}

    def context(path: str) -> PluginContext:
        state = KvState(db, clock, f"plugin:{path}") if db is not None else None
        return PluginContext(
            section_path=path,
            data_dir=settings.data_dir,
            secrets=settings.secrets,
            clock=clock,
            state=state,
        )

    for name in settings.connectors:
        path = f"connectors.{name}"
        try:
            connectors[name] = load_plugin(
                CONNECTORS, name, settings.plugin_section(path), context(path), Connector
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    if settings.channel:
        try:
            channels[settings.channel] = load_plugin(
                CHANNELS,
                settings.channel,
                settings.plugin_section(settings.channel),
                context(settings.channel),
                Channel,
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return connectors, channels


async def bootstrap(
    settings: Settings,
    exit_stack: AsyncExitStack,
    log: FilteringBoundLogger,
    *,
    clock: Clock | None = None,
) -> Bridge:
    """Build and start everything but the HTTP server and the relay loop.

    Raises:
        StoreUnavailable, ConfigError, PluginError: start-up cannot continue.
    """
    clock = clock or SystemClock()
    load_plugins(settings, clock)  # validate every section before touching the database
    cipher = data_cipher(settings)
    db = await open_database(settings)
    exit_stack.push_async_callback(db.dispose)
    # before anything reads or writes patient data: refuse a missing or wrong key
    await ensure_data_key(db, cipher, clock, seal=settings.migrate_on_start, log=log)
    connectors, channels = load_plugins(settings, clock, db)
    metrics = Metrics()
    inbox = InboxWriter(db, clock, cipher)
    await inbox.start(exit_stack)
    sink = MeasuredSink(inbox, metrics)
    outbox = SqlOutbox(db, clock, cipher)
    audit = AuditLog(db, clock)
    http_client = httpx.AsyncClient(timeout=10.0)
    exit_stack.push_async_callback(http_client.aclose)
    engine = await Engine.create(
        settings=settings,
        db=db,
        clock=clock,
        outbox=outbox,
        audit=audit,
        connectors=connectors,
        http_client=http_client,
        cipher=cipher,
    )
    relay = Relay(
        outbox=outbox,
        channels={**channels, **engine.channels()},
        clock=clock,
        settings=settings.relay,
        metrics=metrics,
        log=log,
        prepare=engine.prepare,
        after_release=engine.followups,
    )
    processor = EventProcessor(db, clock, engine.handlers(), metrics, log, cipher=cipher)
    tokens, _ = parse_admin_tokens(settings.secrets.get("BRIDGE_ADMIN_TOKENS", ""))
    bridge = Bridge(
        settings=settings,
        db=db,
        clock=clock,
        metrics=metrics,
        log=log,
        inbox=inbox,
        sink=sink,
        outbox=outbox,
        audit=audit,
        relay=relay,
        processor=processor,
        engine=engine,
        readiness=Readiness(),
        admin=AdminTokens(tokens, metrics),
        connectors=connectors,
        channels=channels,
        cipher=cipher,
    )
    _add_readiness(bridge)

    for name, channel in channels.items():
        start = getattr(channel, "start", None)
        if start is not None:
            await start(exit_stack)
        bridge.routes.extend(_routes_of(channel, sink))
        log.info("channel.started", channel=name)
    for name, connector in connectors.items():
        try:
            await connector.start(exit_stack, sink, log.bind(connector=name))
        except OSError as exc:
            raise ListenerUnavailable(
                f"connector {name}", "its configured address", exc.strerror or type(exc).__name__
            ) from exc
        bridge.routes.extend(_routes_of(connector, sink))
        bridge.started_connectors.add(name)
        log.info("connector.started", connector=name)
    return bridge


def _routes_of(plugin: object, sink: EventSink) -> list[BaseRoute]:
    routes = getattr(plugin, "routes", None)
    return list(routes(sink)) if callable(routes) else []


def _add_readiness(bridge: Bridge) -> None:
    async def database() -> tuple[bool, str]:
        return (await bridge.db.ping(), "database unreachable")

    async def migrations() -> tuple[bool, str]:
        current, head = await current_revision(bridge.db), head_revision()
        return current == head, f"schema at {current}, expected {head}"

    async def connectors() -> tuple[bool, str]:
        missing = set(bridge.connectors) - bridge.started_connectors
        return not missing, f"not started: {', '.join(sorted(missing))}"

    bridge.readiness.checks.update(database=database, migrations=migrations, connectors=connectors)
