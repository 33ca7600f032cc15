"""FHIR R4 connector: subscriptions and polling in, confirm / cancel / reschedule written back.

Enabled by name (``[bridge] connectors = ["fhir"]``), built with
``FhirConnector.from_config(section, context)``. Facts it implements are in
../shared/reference/fhir.md; the config keys are documented in ``CONFIG_KEYS``::

    [connectors.fhir]
    base_url = "https://ehr.example/fhir"
    auth = "smart"                       # none | bearer | smart
    smart_client_id = "bridge"
    smart_private_key_secret = "BRIDGE_FHIR_PRIVATE_KEY"
    default_region = "CO"
    timezone = "America/Bogota"
    notify_base_url = "https://bridge.example"

    [[connectors.fhir.subscriptions]]
    id = "appointments"
    secret = "BRIDGE_FHIR_SUBSCRIPTION_SECRET"
    topic = "http://example.org/SubscriptionTopic/appointment-booked"
    content = "id-only"
    heartbeat_seconds = 60
    create = true

The daemon wires: ``routes(sink)`` into the ASGI app, ``poll_once()`` on an APScheduler
interval, ``apply``/``free_slots`` for the engine's commands. ``inspect`` is
``bridge inspect fhir FILE``.
"""

from __future__ import annotations

__all__ = [
    "CONFIG_KEYS",
    "AppointmentHistory",
    "Capabilities",
    "CursorStore",
    "FhirClient",
    "FhirConnector",
    "FhirSettings",
    "MemoryAppointmentHistory",
    "MemoryCursorStore",
    "inspect",
    "notification_routes",
]

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from starlette.routing import Route
from structlog.typing import FilteringBoundLogger

from bridge.domain import (
    AppointmentRef,
    CommandResult,
    FreeSlot,
    Problem,
    SchedulingCommand,
    Translation,
)
from bridge.errors import BridgeError, ConnectorError, EHRUnavailable
from bridge.ports import Clock, EventSink, PluginContext, SystemClock

from ._auth import BearerAuth, FhirAuth, NoAuth, SmartBackendAuth
from ._client import Capabilities, FhirClient
from ._config import CONFIG_KEYS, FhirSettings, SubscriptionSettings, parse_settings
from ._ingest import (
    AppointmentHistory,
    Ingestor,
    MemoryAppointmentHistory,
    StateAppointmentHistory,
)
from ._poll import CursorStore, MemoryCursorStore, Poller
from ._receiver import Answer, Receiver, heartbeat_watch, notification_routes
from ._translate import TranslateContext, translate_payload
from ._writeback import WriteBack

_BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"


def inspect(payload: bytes, *, tz: str | None = None, region: str | None = None) -> Translation:
    """Translate one FHIR resource or Bundle the way the daemon would, without a server.

    Args:
        payload: the file's bytes.
        tz: IANA zone for date-times without offset (``--tz``).
        region: default region for national phone numbers (``--region``).

    Returns:
        Events and problems (``Translation.marshal()`` is the ``--json`` object); never raises
        for bad content.
    """
    problems: list[Problem] = []
    zone = None
    if tz:
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(
                Problem(code="tz.unknown", field="--tz", message="not an IANA time zone")
            )
    if region is not None and not (len(region) == 2 and region.isalpha()):
        problems.append(
            Problem(code="region.invalid", field="--region", message="not a 2-letter code")
        )
        region = None
    ctx = TranslateContext(
        now=datetime.now(UTC), system="fhir", region=region.upper() if region else None, tz=zone
    )
    translation = translate_payload(payload, ctx)
    if not problems:
        return translation
    return Translation(
        events=translation.events,
        problems=(*problems, *translation.problems),
        message_id=translation.message_id,
    )


class FhirConnector:
    """The FHIR R4 connector (a :class:`bridge.ports.Connector` and ``SlotFinder``).

    Args:
        settings: the validated config section.
        clock: the clock port.
        cursors: where poll cursors persist (default: memory; the lead injects the store's).
        history: what was seen of each appointment (default: memory).
        transport: an httpx transport for the FHIR client (tests).
    """

    name = "fhir"

    def __init__(
        self,
        settings: FhirSettings,
        *,
        clock: Clock | None = None,
        cursors: CursorStore | None = None,
        history: AppointmentHistory | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._clock: Clock = clock or SystemClock()
        self.cursors: CursorStore = cursors or MemoryCursorStore()
        self.history: AppointmentHistory = history or MemoryAppointmentHistory()
        self._transport = transport
        self._client: FhirClient | None = None
        self._sink: EventSink | None = None
        self._log: FilteringBoundLogger | None = None
        self._writeback: WriteBack | None = None
        self._poller: Poller | None = None
        self._receiver: Receiver | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resyncs: set[asyncio.Task[Any]] = set()
        #: subscription ids created or found active on the server at start
        self.subscription_ids: dict[str, str] = {}

    @classmethod
    def from_config(cls, section: Mapping[str, Any], context: PluginContext) -> Self:
        """Build from the ``[connectors.fhir]`` section; secrets come from ``context.secrets``.

        Raises:
            bridge.errors.ConfigError: every problem at once, keys prefixed by the section path.
        """
        state = context.state
        return cls(
            parse_settings(section, context),
            clock=context.clock,
            cursors=state,
            history=StateAppointmentHistory(state) if state is not None else None,
        )

    # ---------------------------------------------------------------- lifecycle

    def _auth(self) -> FhirAuth:
        s = self.settings
        if s.auth == "bearer" and s.token:
            return BearerAuth(s.token)
        if s.auth == "smart" and s.smart_client_id and s.smart_private_key:
            return SmartBackendAuth(
                base_url=s.base_url,
                client_id=s.smart_client_id,
                private_key=s.smart_private_key,
                alg=s.smart_alg,
                scope=s.smart_scope,
                clock=self._clock,
                kid=s.smart_kid,
                token_url=s.smart_token_url,
            )
        return NoAuth()

    async def start(
        self, exit_stack: AsyncExitStack, sink: EventSink, log: FilteringBoundLogger
    ) -> None:
        """Open the client, read the CapabilityStatement, verify/create subscriptions.

        Raises:
            bridge.errors.EHRUnavailable: the server did not answer ``metadata``.
            bridge.errors.ConnectorError: the server is not FHIR R4.
        """
        s = self.settings
        log = log.bind(connector=self.name)
        client = FhirClient(
            s.base_url,
            auth=self._auth(),
            verify=s.tls_verify,
            timeout=s.timeout_seconds,
            retries=s.retries,
            backoff=s.backoff_seconds,
            transport=self._transport,
            log=log,
        )
        exit_stack.push_async_callback(client.aclose)
        capability = await client.capabilities()
        log.info(
            "fhir.capabilities",
            fhir_version=capability.fhir_version,
            software=capability.software,
            appointment=sorted(capability.interactions.get("Appointment", ())),
            find=capability.has_operation("Appointment", "find"),
            subscriptions=capability.subscriptions,
            topics=len(capability.topics),
        )
        if not capability.fhir_version.startswith(("4.0", "4.3")):
            raise ConnectorError(
                f"fhir: server speaks FHIR {capability.fhir_version[:16]!r}, not R4"
            )
        self._client, self._sink, self._log = client, sink, log
        ingestor = Ingestor(
            client,
            history=self.history,
            clock=self._clock,
            region=s.default_region,
            timezone=s.timezone,
            known_topics=s.known_topics,
            log=log,
        )
        self._writeback = WriteBack(
            client,
            clock=self._clock,
            confirm_mode=s.confirm_mode,
            cancel_reason=s.cancel_reason,
            reschedule_mode=s.reschedule_mode,
            log=log,
        )
        self._poller = Poller(
            client,
            ingestor,
            self.cursors,
            types=s.poll_types,
            page_size=s.poll_page_size,
            lookback=timedelta(hours=s.poll_lookback_hours),
            clock=self._clock,
            log=log,
        )
        self._receiver = Receiver(
            s, client, ingestor, resync=self._request_resync, clock=self._clock, log=log
        )
        exit_stack.push_async_callback(self._stop_tasks)
        periods = [sub.heartbeat_seconds for sub in s.subscriptions if sub.heartbeat_seconds]
        if periods:
            self._spawn(heartbeat_watch(self._receiver, min(periods) / 2))
        await self.ensure_subscriptions()

    async def _stop_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _request_resync(self, subscription_id: str) -> None:
        task = self._spawn(self._resync(subscription_id))
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)

    async def _resync(self, subscription_id: str) -> None:
        try:
            await self.poll_once()
        except BridgeError as exc:
            # the scheduled poll tries again; a resync must not crash the endpoint
            if self._log is not None:
                self._log.warning(
                    "fhir.resync_failed", subscription=subscription_id, error=type(exc).__name__
                )

    async def idle(self, within: float = 10.0) -> None:
        """Wait until background resyncs are done (tests and graceful shutdown)."""
        pending = [t for t in self._resyncs if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=within)

    def _started(self) -> FhirClient:
        if self._client is None:
            raise EHRUnavailable(self.name, "connector not started")
        return self._client

    # ---------------------------------------------------------------- subscriptions

    def _subscription_resource(self, sub: SubscriptionSettings, endpoint: str) -> dict[str, Any]:
        header_name = self.settings.notify_header
        value = f"Bearer {sub.secret}" if header_name.lower() == "authorization" else sub.secret
        channel: dict[str, Any] = {
            "type": "rest-hook",
            "endpoint": endpoint,
            "header": [f"{header_name}: {value}"],
        }
        resource: dict[str, Any] = {
            "resourceType": "Subscription",
            "status": "requested",
            "reason": "EHR-WhatsApp bridge notifications",
            "channel": channel,
        }
        if sub.topic is not None:
            resource["meta"] = {"profile": [f"{_BACKPORT}/backport-subscription"]}
            resource["criteria"] = sub.topic
            channel["payload"] = "application/fhir+json"
            channel["_payload"] = {
                "extension": [
                    {"url": f"{_BACKPORT}/backport-payload-content", "valueCode": sub.content}
                ]
            }
            if sub.heartbeat_seconds:
                channel["extension"] = [
                    {
                        "url": f"{_BACKPORT}/backport-heartbeat-period",
                        "valueUnsignedInt": sub.heartbeat_seconds,
                    }
                ]
        else:
            resource["criteria"] = sub.criteria
            if sub.content == "full-resource":
                channel["payload"] = "application/fhir+json"
        return resource

    async def ensure_subscriptions(self) -> dict[str, str]:
        """Find or create the server-side Subscription of each ``create = true`` endpoint.

        Returns:
            Our subscription id → the server's Subscription id.
        """
        client = self._started()
        base = self.settings.notify_base_url
        for sub in self.settings.subscriptions:
            if not sub.create or base is None:
                continue
            endpoint = f"{base}/fhir/notify/{sub.id}"
            found = await client.request("GET", "Subscription", params=[("url", endpoint)])
            existing = [
                e.get("resource")
                for e in (found.resource or {}).get("entry", []) or []
                if isinstance(e, Mapping)
                and isinstance(e.get("resource"), Mapping)
                and e["resource"].get("channel", {}).get("endpoint") == endpoint
                and e["resource"].get("status") in ("requested", "active")
            ]
            if existing and isinstance(existing[0], Mapping):
                self.subscription_ids[sub.id] = str(existing[0].get("id"))
                continue
            created = await client.create(self._subscription_resource(sub, endpoint))
            self.subscription_ids[sub.id] = str((created.resource or {}).get("id"))
            if self._log is not None:
                self._log.info(
                    "fhir.subscription_created",
                    subscription=sub.id,
                    server_id=self.subscription_ids[sub.id],
                )
        return dict(self.subscription_ids)

    # ---------------------------------------------------------------- ports

    async def apply(self, command: SchedulingCommand) -> CommandResult:
        """Apply one decision and read it back (see ``_writeback``).

        Raises:
            bridge.errors.EHRUnavailable: retry later.
            bridge.errors.EHRRejected: do not retry as is (``conflict``: hand to a human).
        """
        self._started()
        if self._writeback is None:
            raise EHRUnavailable(self.name, "connector not started")
        return await self._writeback.apply(command)

    async def free_slots(self, appointment: AppointmentRef, limit: int) -> Sequence[FreeSlot]:
        """Up to ``limit`` free slots of the same schedule and service (the SlotFinder port)."""
        self._started()
        if self._writeback is None:
            raise EHRUnavailable(self.name, "connector not started")
        return await self._writeback.free_slots(appointment, limit)

    async def record_communication(
        self,
        *,
        about: str,
        patient_id: str,
        wamid: str,
        status: str = "completed",
        sent: datetime | None = None,
    ) -> str | None:
        """Record a sent WhatsApp message as a Communication when ``record_communications``.

        Returns:
            The Communication id, or None when recording is off.
        """
        if not self.settings.record_communications:
            return None
        self._started()
        if self._writeback is None:
            raise EHRUnavailable(self.name, "connector not started")
        return await self._writeback.record_communication(
            about=about, patient_id=patient_id, wamid=wamid, status=status, sent=sent
        )

    @property
    def poll_interval_seconds(self) -> float:
        """How often the daemon's scheduler calls :meth:`poll_once` (0: never)."""
        return self.settings.poll_interval_seconds

    async def poll_once(self) -> int:
        """Poll every configured type once (APScheduler calls this); returns resources stored.

        Raises:
            bridge.errors.EHRUnavailable: the server failed; the next run resumes.
            bridge.errors.StoreUnavailable: the store failed; the next run resumes.
        """
        self._started()
        if self._poller is None or self._sink is None:
            raise EHRUnavailable(self.name, "connector not started")
        return await self._poller.poll_once(self._sink)

    def routes(self, sink: EventSink) -> list[Route]:
        """The notification routes to mount (``/fhir/notify/{subscription_id}``)."""
        return notification_routes(self, sink)

    def notification_handler(self) -> Callable[..., Awaitable[Answer]] | None:
        """The receiver's handler once started, else None (the route answers 503)."""
        return self._receiver.handle if self._receiver is not None else None

    @property
    def receiver(self) -> Receiver | None:
        """The notification receiver (its per-subscription state), once started."""
        return self._receiver

    @property
    def capabilities(self) -> Capabilities | None:
        """The CapabilityStatement read at start."""
        return self._client.capability if self._client is not None else None
