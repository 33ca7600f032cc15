"""The rest-hook endpoint ``/fhir/notify/{subscription_id}``: Backport and classic R4 notifications.

Implements ../shared/reference/fhir.md §2.1 (Backport: handshake, heartbeat, event-notification;
empty / id-only / full-resource; gaps in ``events-since-subscription-start`` or missing
heartbeats → resync by polling) and §1.9 (classic R4: an empty ping, or the resource POSTed or
PUT to ``[endpoint]/[type]/[id]``).

Order of checks: the subscription id must be configured (404), the channel header must carry
its secret (401, compared with ``hmac.compare_digest``; nothing is stored before that), then the
body is read. A body we cannot use is kept in quarantine and answered 400 with a JSON reason.
A 2xx is sent only after the sink has stored what the notification brought.
"""

from __future__ import annotations

__all__ = ["Receiver", "SubscriptionState", "notification_routes"]

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from structlog.typing import FilteringBoundLogger

from bridge.domain import InboundMessage, Problem, Translation
from bridge.errors import BridgeError, EHRRejected, EHRUnavailable, StoreUnavailable
from bridge.ports import Clock, EventSink

from ._client import FhirClient
from ._config import FhirSettings, SubscriptionSettings
from ._ingest import FHIR_JSON, Ingestor
from ._notification import NotificationStatus, is_notification_bundle
from ._translate import decode
from ._values import parse_reference

if TYPE_CHECKING:
    from . import FhirConnector

Answer = tuple[int, dict[str, Any]]


@dataclass
class SubscriptionState:
    """What one endpoint has seen: the server's event counter and when it last spoke."""

    events_seen: int | None = None
    last_seen: datetime | None = None
    resyncs: int = 0


class Receiver:
    """Handles notification requests; the Starlette routes only carry bytes in and out.

    Args:
        settings: the connector settings (subscriptions, header name).
        client: the FHIR client (id-only fetches).
        ingestor: translation and storage.
        resync: starts a resync by polling (never awaited by the request).
        clock: the clock port.
        log: structlog logger (ids only).
    """

    def __init__(
        self,
        settings: FhirSettings,
        client: FhirClient,
        ingestor: Ingestor,
        *,
        resync: Callable[[str], None],
        clock: Clock,
        log: FilteringBoundLogger,
    ) -> None:
        self._subscriptions = {s.id: s for s in settings.subscriptions}
        self._header = settings.notify_header
        self._client = client
        self._ingestor = ingestor
        self._resync = resync
        self._clock = clock
        self._log = log
        self.states: dict[str, SubscriptionState] = {
            s: SubscriptionState() for s in self._subscriptions
        }

    def _authorized(self, subscription: SubscriptionSettings, headers: Mapping[str, str]) -> bool:
        sent = headers.get(self._header.lower(), "")
        if self._header.lower() == "authorization":
            expected = f"Bearer {subscription.secret}"
        else:
            expected = subscription.secret
        return bool(subscription.secret) and hmac.compare_digest(sent.encode(), expected.encode())

    def _resync_now(self, subscription_id: str, why: str) -> None:
        state = self.states[subscription_id]
        state.resyncs += 1
        self._log.info("fhir.notify.resync", subscription=subscription_id, reason=why)
        self._resync(subscription_id)

    async def _quarantine(
        self, sink: EventSink, subscription_id: str, body: bytes, problem: Problem
    ) -> Answer:
        message = InboundMessage(
            connector="fhir",
            sender=f"{self._client.base_url}#notify/{subscription_id}",
            source_id=f"notify/{hashlib.sha256(body).hexdigest()[:32]}",
            payload=body,
            translation=Translation(problems=(problem,)),
            content_type=FHIR_JSON,
        )
        await sink.ingest(message)
        return 400, {"error": problem.code, "reason": problem.message}

    async def handle(
        self,
        subscription_id: str,
        headers: Mapping[str, str],
        body: bytes,
        sink: EventSink,
        *,
        path_resource: str | None = None,
    ) -> Answer:
        """Answer one notification request (status, JSON body); never raises.

        Args:
            subscription_id: the ``{subscription_id}`` path segment.
            headers: request headers, lower-case names.
            body: the raw body.
            sink: where resources go.
            path_resource: ``Type/id`` when a classic server PUT to ``[endpoint]/Type/id``.
        """
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None:
            return 404, {"error": "subscription.unknown", "reason": "no such notification endpoint"}
        if not self._authorized(subscription, headers):
            return 401, {
                "error": "unauthorized",
                "reason": f"missing or wrong {self._header} header",
            }
        state = self.states[subscription_id]
        state.last_seen = self._clock.now()
        try:
            return await self._dispatch(subscription, state, body, sink, path_resource)
        except StoreUnavailable:
            return 503, {"error": "store.unavailable", "reason": "not stored; send again"}
        except EHRUnavailable:
            self._resync_now(subscription_id, "fetch failed")
            return 503, {"error": "ehr.unavailable", "reason": "could not read the focus resources"}
        except BridgeError as exc:
            self._log.warning(
                "fhir.notify.failed", subscription=subscription_id, error=type(exc).__name__
            )
            return 500, {"error": "bridge.error", "reason": type(exc).__name__}

    async def _dispatch(
        self,
        subscription: SubscriptionSettings,
        state: SubscriptionState,
        body: bytes,
        sink: EventSink,
        path_resource: str | None,
    ) -> Answer:
        if not body.strip():
            # classic R4 without payload, or an empty ping: something changed, look for it
            self._resync_now(subscription.id, "empty notification")
            return 200, {"status": "resync"}
        resource, problem = decode(body)
        if resource is None:
            why = problem or Problem(code="payload.invalid", message="unreadable", fatal=True)
            return await self._quarantine(sink, subscription.id, body, why)
        if resource.get("resourceType") == "Bundle":
            status = is_notification_bundle(resource)
            if status is not None:
                return await self._backport(subscription, state, resource, status, body, sink)
            return await self._resources(
                [
                    e["resource"]
                    for e in resource.get("entry", []) or []
                    if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)
                ],
                sink,
            )
        if (
            path_resource is not None
            and path_resource != f"{resource.get('resourceType')}/{resource.get('id')}"
        ):
            problem = Problem(
                code="notification.path_mismatch",
                message="the resource in the body is not the one named in the URL",
                fatal=True,
            )
            return await self._quarantine(sink, subscription.id, body, problem)
        return await self._resources([resource], sink)

    async def _resources(self, resources: list[Mapping[str, Any]], sink: EventSink) -> Answer:
        fatal: list[Problem] = []
        for resource in resources:
            _, translation = await self._ingestor.ingest(resource, sink)
            fatal.extend(p for p in translation.problems if p.fatal)
        if fatal:
            return 400, {"error": fatal[0].code, "reason": fatal[0].message, "kept": True}
        return 200, {"status": "stored", "resources": len(resources)}

    async def _backport(
        self,
        subscription: SubscriptionSettings,
        state: SubscriptionState,
        bundle: Mapping[str, Any],
        status: NotificationStatus,
        body: bytes,
        sink: EventSink,
    ) -> Answer:
        if subscription.topic is not None and status.topic not in (None, subscription.topic):
            problem = Problem(
                code="notification.unknown_topic",
                message="notification for a topic this endpoint did not subscribe to",
                fatal=True,
            )
            return await self._quarantine(sink, subscription.id, body, problem)
        counter = status.events_since_start
        if status.type == "handshake":
            state.events_seen = counter if counter is not None else 0
            return 200, {"status": "ok", "type": "handshake"}
        if status.type == "heartbeat":
            if (
                counter is not None
                and state.events_seen is not None
                and counter > state.events_seen
            ):
                self._resync_now(subscription.id, "heartbeat counter ahead")
            if counter is not None:
                state.events_seen = max(counter, state.events_seen or 0)
            return 200, {"status": "ok", "type": "heartbeat"}
        if status.type != "event-notification":
            if status.status == "error" or status.errors:
                self._resync_now(subscription.id, "subscription reports an error")
            return 200, {"status": "ok", "type": status.type or "unknown"}
        numbers = [e.number for e in status.events if e.number is not None]
        if numbers and state.events_seen is not None and min(numbers) > state.events_seen + 1:
            self._resync_now(subscription.id, "event number gap")
        if numbers or counter is not None:
            state.events_seen = max([*numbers, counter or 0, state.events_seen or 0])
        included = [
            e["resource"]
            for e in bundle.get("entry", [])[1:]
            if isinstance(e, Mapping) and isinstance(e.get("resource"), Mapping)
        ]
        have = {f"{r.get('resourceType')}/{r.get('id')}" for r in included}
        fetched: list[Mapping[str, Any]] = []
        for event in status.events:
            ref = parse_reference(event.focus)
            if ref is None or ref.relative in have:
                continue
            try:
                answer = (
                    await self._client.read(ref.type, ref.id)
                    if ref.base is None or (ref.base.rstrip("/") == self._client.base_url)
                    else None
                )
            except EHRRejected as exc:
                self._log.warning("fhir.notify.focus_unreadable", focus=ref.relative, code=exc.code)
                continue
            if answer is not None and answer.resource is not None:
                fetched.append(answer.resource)
                have.add(ref.relative)
        if not included and not fetched and not any(e.focus for e in status.events):
            self._resync_now(subscription.id, "empty payload")
            return 200, {"status": "resync"}
        stored = await self._resources([*included, *fetched], sink)
        return (200, {**stored[1], "type": "event-notification"}) if stored[0] == 200 else stored

    def check_heartbeats(self) -> list[str]:
        """Resync every subscription whose heartbeats stopped (silent for 2 periods)."""
        now = self._clock.now()
        late = []
        for sub_id, subscription in self._subscriptions.items():
            period = subscription.heartbeat_seconds
            state = self.states[sub_id]
            if period is None or state.last_seen is None:
                continue
            if now - state.last_seen > timedelta(seconds=2 * period):
                late.append(sub_id)
                state.last_seen = now  # one resync per silence, not one per check
                self._resync_now(sub_id, "heartbeat missed")
        return late


def notification_routes(connector: FhirConnector, sink: EventSink) -> list[Route]:
    """Starlette routes for ``/fhir/notify/{subscription_id}`` (POST; PUT ``.../Type/id``).

    Args:
        connector: a started :class:`FhirConnector` (503 until it is).
        sink: where notified resources are stored.

    Returns:
        The routes to mount in the bridge's ASGI app.
    """

    async def endpoint(request: Request) -> JSONResponse:
        handle: Callable[..., Awaitable[Answer]] | None = connector.notification_handler()
        if handle is None:
            return JSONResponse({"error": "starting", "reason": "connector not started"}, 503)
        body = await request.body()
        params = request.path_params
        path_resource = f"{params['rtype']}/{params['rid']}" if "rtype" in params else None
        status, answer = await handle(
            str(params["subscription_id"]),
            {k.lower(): v for k, v in request.headers.items()},
            body,
            sink,
            path_resource=path_resource,
        )
        return JSONResponse(answer, status)

    return [
        Route("/fhir/notify/{subscription_id}", endpoint, methods=["POST", "PUT"]),
        Route("/fhir/notify/{subscription_id}/{rtype}/{rid}", endpoint, methods=["POST", "PUT"]),
    ]


async def heartbeat_watch(receiver: Receiver, period: float) -> None:
    """Check heartbeats every ``period`` seconds until cancelled."""
    while True:
        await asyncio.sleep(period)
        receiver.check_heartbeats()
