"""FhirConnector: config validation, the Connector protocol, and the notification endpoint."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette

from bridge.errors import ConfigError
from bridge.ports import Connector, PluginContext, SlotFinder
from bridge.testing import FixedClock, MemorySink
from connectors.fhir import CONFIG_KEYS, FhirConnector
from connectors.fhir._config import parse_settings

BASE = "http://ehr.test/fhir"
TOPIC = "http://ehr.test/topic/appointment"
SECRET = "notify-secret-for-tests"


def _context(**secrets: str) -> PluginContext:
    return PluginContext(
        section_path="connectors.fhir",
        data_dir=Path("."),
        secrets={"BRIDGE_FHIR_SUBSCRIPTION_SECRET": SECRET, **secrets},
        clock=FixedClock(datetime(2026, 11, 22, 10, 0, tzinfo=UTC)),
    )


class TestConfig:
    def test_every_problem_is_listed_at_once_with_prefixed_keys(self) -> None:
        section = {
            "base_url": "ftp://nope",
            "auth": "smart",
            "confirm_mode": "fax",
            "retries": True,
            "colour": "blue",
            "default_region": "Colombia",
            "timezone": "Mars/Olympus",
            "poll_types": ["Appointment", "Encounter"],
            "subscriptions": [
                {
                    "id": "a",
                    "topic": TOPIC,
                    "criteria": "Appointment?",
                    "bogus": 1,
                    "secret": "MISSING",
                }
            ],
        }
        with pytest.raises(ConfigError) as caught:
            FhirConnector.from_config(section, _context())
        keys = {p.key for p in caught.value.problems}
        assert {
            "connectors.fhir.base_url",
            "connectors.fhir.confirm_mode",
            "connectors.fhir.retries",
            "connectors.fhir.colour",
            "connectors.fhir.default_region",
            "connectors.fhir.timezone",
            "connectors.fhir.poll_types",
            "connectors.fhir.smart_client_id",
            "connectors.fhir.smart_private_key_secret",
            "connectors.fhir.subscriptions[0].bogus",
            "connectors.fhir.subscriptions[0].secret",
            "connectors.fhir.subscriptions[0]",
        } <= keys

    def test_bearer_token_comes_from_the_secrets_and_is_never_shown(self) -> None:
        settings = parse_settings(
            {"base_url": BASE, "auth": "bearer"}, _context(BRIDGE_FHIR_TOKEN="tok-123")
        )
        assert settings.token == "tok-123"
        assert "tok-123" not in repr(settings)

    def test_missing_bearer_secret_is_a_problem(self) -> None:
        with pytest.raises(ConfigError) as caught:
            parse_settings({"base_url": BASE, "auth": "bearer"}, _context())
        assert [p.key for p in caught.value.problems] == ["connectors.fhir.token_secret"]

    def test_documented_keys_are_the_accepted_keys(self) -> None:
        section = {key: default for key, (default, _) in CONFIG_KEYS.items() if default is not None}
        section["base_url"] = BASE
        assert parse_settings(section, _context()).base_url == BASE

    def test_connector_meets_the_ports(self) -> None:
        connector = FhirConnector.from_config({"base_url": BASE}, _context())
        assert isinstance(connector, Connector) and isinstance(connector, SlotFinder)
        assert connector.name == "fhir"


def _status(
    kind: str, *, number: int, focus: tuple[str, ...] = (), topic: str = TOPIC
) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{BASE}/Subscription/srv-1"}},
        {"name": "topic", "valueCanonical": topic},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(number)},
    ]
    if kind == "event-notification":
        parts: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(number)}]
        parts += [{"name": "focus", "valueReference": {"reference": f}} for f in focus]
        params.append({"name": "notification-event", "part": parts})
    return [
        {
            "fullUrl": "urn:uuid:5f0c8f6e-2222-4222-8222-222222222222",
            "resource": {"resourceType": "Parameters", "parameter": params},
        }
    ]


def _bundle(entries: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"resourceType": "Bundle", "id": "n", "type": "history", "entry": entries}
    ).encode()


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "telecom": [{"system": "phone", "value": "+573001230007", "use": "mobile"}],
}


def _appointment(version: str = "1", start: str = "2030-01-01T10:00:00Z") -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": "a1",
        "meta": {"versionId": version, "lastUpdated": "2026-11-22T09:00:00Z"},
        "status": "booked",
        "start": start,
        "end": "2030-01-01T10:30:00Z",
        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "needs-action"}],
    }


@dataclass
class Started:
    connector: FhirConnector
    sink: MemorySink
    fake: Any
    resyncs: list[str] = field(default_factory=list)

    async def post(
        self,
        body: bytes,
        *,
        sub: str = "appts",
        auth: str | None = f"Bearer {SECRET}",
        **headers: str,
    ) -> tuple[int, dict[str, Any]]:
        handle = self.connector.notification_handler()
        assert handle is not None
        sent = {k.lower(): v for k, v in headers.items()}
        if auth is not None:
            sent["authorization"] = auth
        status, answer = await handle(sub, sent, body, self.sink)
        await self.connector.idle()
        return status, answer


@pytest.fixture(name="started")
async def _started(fake_fhir: Any, transport: httpx.ASGITransport) -> AsyncIterator[Started]:
    fake_fhir.put(PATIENT)
    fake_fhir.put(_appointment())
    section = {
        "base_url": BASE,
        "retries": 1,
        "poll_types": ["Appointment"],
        "subscriptions": [{"id": "appts", "topic": TOPIC, "heartbeat_seconds": 60}],
    }
    context = _context()
    connector = FhirConnector(
        parse_settings(section, context), clock=context.clock, transport=transport
    )
    sink = MemorySink()
    async with AsyncExitStack() as stack:
        await connector.start(stack, sink, structlog.get_logger())
        yield Started(connector, sink, fake_fhir)


def _resyncs(started: Started) -> int:
    receiver = started.connector.receiver
    assert receiver is not None
    return receiver.states["appts"].resyncs


@dataclass(frozen=True)
class RefusalCase:
    label: str
    sub: str
    auth: str | None
    status: int


REFUSALS = [
    RefusalCase("unknown endpoint", "nope", f"Bearer {SECRET}", 404),
    RefusalCase("no header", "appts", None, 401),
    RefusalCase("wrong secret", "appts", "Bearer wrong", 401),
    RefusalCase("secret without Bearer", "appts", SECRET, 401),
]


class TestNotificationEndpoint:
    @pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.label)
    async def test_refused_requests_store_nothing(
        self, started: Started, case: RefusalCase
    ) -> None:
        body = _bundle([*_status("event-notification", number=1), {"resource": _appointment()}])
        status, answer = await started.post(body, sub=case.sub, auth=case.auth)
        assert status == case.status and "error" in answer
        assert started.sink.messages == []

    async def test_handshake_and_heartbeat_are_acknowledged(self, started: Started) -> None:
        assert (await started.post(_bundle(_status("handshake", number=0))))[0] == 200
        assert (await started.post(_bundle(_status("heartbeat", number=0))))[0] == 200
        assert started.sink.messages == [] and _resyncs(started) == 0

    async def test_id_only_notification_fetches_the_focus_and_its_patient(
        self, started: Started
    ) -> None:
        await started.post(_bundle(_status("handshake", number=0)))
        status, answer = await started.post(
            _bundle(_status("event-notification", number=1, focus=(f"{BASE}/Appointment/a1",)))
        )
        assert (status, answer["resources"]) == (200, 1)
        event = started.sink.events[0].marshal()
        assert (event["type"], event["patient"]["phone"]) == ("appointment.booked", "+573001230007")
        assert (
            "GET /fhir/Appointment/a1" in started.fake.paths()
            and "GET /fhir/Patient/p1" in started.fake.paths()
        )
        assert _resyncs(started) == 0

    async def test_full_resource_notification_is_stored_without_fetching_it(
        self, started: Started
    ) -> None:
        body = _bundle(
            [
                *_status("event-notification", number=1, focus=(f"{BASE}/Appointment/a1",)),
                {"fullUrl": f"{BASE}/Appointment/a1", "resource": _appointment()},
            ]
        )
        status, _ = await started.post(body)
        assert status == 200
        assert "GET /fhir/Appointment/a1" not in started.fake.paths()
        assert started.sink.messages[0].source_id == "Appointment/a1/_history/1"

    async def test_gap_in_event_numbers_triggers_a_resync_by_polling(
        self, started: Started
    ) -> None:
        await started.post(_bundle(_status("handshake", number=0)))
        await started.post(
            _bundle(_status("event-notification", number=3, focus=(f"{BASE}/Appointment/a1",)))
        )
        assert _resyncs(started) == 1
        assert any(
            p.startswith("GET /fhir/Appointment") and p != "GET /fhir/Appointment/a1"
            for p in started.fake.paths()
        )

    async def test_heartbeat_counter_ahead_triggers_a_resync(self, started: Started) -> None:
        await started.post(_bundle(_status("handshake", number=0)))
        await started.post(_bundle(_status("heartbeat", number=2)))
        assert _resyncs(started) == 1

    async def test_empty_notification_resyncs(self, started: Started) -> None:
        status, answer = await started.post(_bundle(_status("event-notification", number=1)))
        assert (status, answer["status"]) == (200, "resync") and _resyncs(started) == 1
        assert (await started.post(b""))[1]["status"] == "resync"

    async def test_missed_heartbeats_trigger_a_resync(self, started: Started) -> None:
        await started.post(_bundle(_status("handshake", number=0)))
        clock = started.connector._clock
        assert isinstance(clock, FixedClock)
        receiver = started.connector.receiver
        assert receiver is not None
        assert receiver.check_heartbeats() == []
        clock.advance(timedelta(seconds=121))
        assert receiver.check_heartbeats() == ["appts"]

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b"{not json", "payload.not_json"),
            (
                _bundle(_status("heartbeat", number=1, topic="http://other/topic")),
                "notification.unknown_topic",
            ),
            (
                json.dumps(
                    {"resourceType": "Appointment", "id": "x", "status": "booked", "nope": 1}
                ).encode(),
                "resource.invalid",
            ),
        ],
        ids=["not json", "unknown topic", "invalid resource"],
    )
    async def test_bad_body_is_kept_in_quarantine_and_answered_400(
        self, started: Started, body: bytes, code: str
    ) -> None:
        status, answer = await started.post(body)
        assert (status, answer["error"]) == (400, code)
        assert [m.translation.fatal for m in started.sink.messages] == [True]

    async def test_classic_put_of_the_resource_is_stored_and_dedupes(
        self, started: Started
    ) -> None:
        handle = started.connector.notification_handler()
        assert handle is not None
        body = json.dumps(_appointment()).encode()
        headers = {"authorization": f"Bearer {SECRET}"}
        for _ in range(2):
            status, _ = await handle(
                "appts", headers, body, started.sink, path_resource="Appointment/a1"
            )
            assert status == 200
        assert [o.value for o in started.sink.outcomes] == ["accepted", "duplicate"]

    async def test_routes_serve_the_endpoint_over_http(self, started: Started) -> None:
        app = Starlette(routes=started.connector.routes(started.sink))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://bridge.test"
        ) as http:
            answer = await http.post(
                "/fhir/notify/appts",
                content=_bundle(_status("handshake", number=0)),
                headers={"Authorization": f"Bearer {SECRET}"},
            )
            refused = await http.post("/fhir/notify/appts", content=b"{}")
        assert (answer.status_code, refused.status_code) == (200, 401)
        assert refused.json()["error"] == "unauthorized"

    async def test_poll_once_uses_last_updated_and_advances_the_cursor(
        self, started: Started
    ) -> None:
        assert await started.connector.poll_once() == 1
        assert any(q.startswith("_lastUpdated=ge") for q in started.fake.queries)
        cursor = await started.connector.cursors.get(f"fhir:{BASE}:Appointment")
        assert cursor == "2026-11-22T09:00:00Z"
