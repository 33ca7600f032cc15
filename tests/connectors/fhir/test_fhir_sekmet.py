"""Integration: the FHIR connector against a real FHIR R4 server (sekmet-fhir) on loopback.

The server runs as a subprocess on 127.0.0.1 with its simulator off (it would otherwise re-book
appointments behind our back, fact sheet §6). The bridge's notification routes are served by
uvicorn on 127.0.0.1:0 in the test's event loop. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
from starlette.applications import Starlette

from bridge.domain import (
    AppointmentRef,
    CancelAppointment,
    ConfirmAppointment,
    FreeSlot,
    IngestOutcome,
    RescheduleAppointment,
)
from bridge.errors import EHRRejected
from bridge.ports import PluginContext, SystemClock
from bridge.testing import MemorySink
from connectors.fhir import FhirConnector

TOPIC = "http://sekmet.dev/fhir/SubscriptionTopic/appointment-booked"
SECRET = "s3cret-for-tests-only"
PHONE = "+573001230042"
HEADERS = {"Content-Type": "application/fhir+json"}
TEST_TIMEOUT = 45.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _sekmet_command() -> list[str]:
    found = shutil.which("sekmet", path=str(Path(sys.executable).parent))
    if found is None:
        raise RuntimeError(
            "sekmet-fhir is not installed in this environment (pip install sekmet-fhir)"
        )
    return [found]


@pytest.fixture(name="fhir_base", scope="module")
def _fhir_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sekmet-fhir server on 127.0.0.1, simulator off; its FHIR base URL."""
    home = tmp_path_factory.mktemp("sekmet")
    port = _free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    (home / "settings.yaml").write_text(
        f"base_url: {base}\nhost: 127.0.0.1\nport: {port}\ndata_dir: {home / 'data'}\n"
        "simulator: {enabled: false}\nlog_inbound: false\n"
        "subscriptions: {retries: 1}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
    with (home / "server.log").open("wb") as server_log:
        process = subprocess.Popen(
            [*_sekmet_command(), "serve", "-c", str(home / "settings.yaml")],
            cwd=home,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=server_log,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/metadata", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                tail = (home / "server.log").read_text()[-2000:]
                raise RuntimeError("sekmet-fhir did not start: " + tail)
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass
class Bridge:
    connector: FhirConnector
    sink: MemorySink
    notify_url: str
    ehr: httpx.AsyncClient
    logs: io.StringIO


async def _serve(app: Starlette, stack: AsyncExitStack) -> int:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())

    async def stop() -> None:
        server.should_exit = True
        await asyncio.wait_for(task, 10)

    stack.push_async_callback(stop)
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.02)
    return int(server.servers[0].sockets[0].getsockname()[1])


@pytest.fixture(name="bridge_factory")
async def _bridge_factory(fhir_base: str) -> AsyncIterator[Any]:
    async with AsyncExitStack() as stack:
        ehr = await stack.enter_async_context(
            httpx.AsyncClient(base_url=fhir_base + "/", headers=HEADERS, timeout=10)
        )
        created_subscriptions: list[str] = []

        async def make(**section: Any) -> Bridge:
            app = Starlette()
            port = await _serve(app, stack)
            logs = io.StringIO()
            log = structlog.wrap_logger(
                structlog.PrintLogger(logs),
                wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
            )
            context = PluginContext(
                section_path="connectors.fhir",
                data_dir=Path("."),
                secrets={"BRIDGE_FHIR_SUBSCRIPTION_SECRET": SECRET},
                clock=SystemClock(),
            )
            config = {
                "base_url": fhir_base,
                "default_region": "CO",
                "notify_base_url": f"http://127.0.0.1:{port}",
                "backoff_seconds": 0.05,
                "timeout_seconds": 5.0,
                **section,
            }
            connector = FhirConnector.from_config(config, context)
            sink = MemorySink()
            app.router.routes.extend(connector.routes(sink))
            await connector.start(stack, sink, log)
            created_subscriptions.extend(connector.subscription_ids.values())
            return Bridge(connector, sink, f"http://127.0.0.1:{port}", ehr, logs)

        try:
            yield make
        finally:
            # a Subscription to a stopped endpoint would slow the server's delivery pool
            for sub_id in created_subscriptions:
                await ehr.delete(f"Subscription/{sub_id}")


async def _create(ehr: httpx.AsyncClient, resource: dict[str, Any]) -> dict[str, Any]:
    answer = await ehr.post(resource["resourceType"], json=resource)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def _patient(ehr: httpx.AsyncClient) -> dict[str, Any]:
    return await _create(
        ehr,
        {
            "resourceType": "Patient",
            "name": [{"given": ["Synthetic"]}],
            "telecom": [{"system": "phone", "value": "300 123 0042", "use": "mobile"}],
            "communication": [
                {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es-CO"}]}}
            ],
        },
    )


def _appointment(patient_id: str, start: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "status": "booked",
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=30)).isoformat(),
        "participant": [
            {"actor": {"reference": f"Patient/{patient_id}"}, "status": "needs-action"}
        ],
        **extra,
    }


async def _wait_for(predicate: Any, seconds: float = 20.0) -> None:
    async with asyncio.timeout(seconds):
        while not predicate():
            await asyncio.sleep(0.05)


def _events_for(sink: MemorySink, appointment_id: str) -> list[str]:
    return [
        e.type
        for e in sink.events
        if getattr(getattr(e, "appointment", None), "id", None) == appointment_id
    ]


START = datetime(2030, 3, 4, 14, 0, tzinfo=UTC)


class TestLearningOfChanges:
    async def test_backport_id_only_notification_brings_appointment_and_patient(
        self, bridge_factory: Any
    ) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            # Given a bridge subscribed to the server's appointment-booked topic
            bridge = await bridge_factory(
                subscriptions=[
                    {"id": "appts", "topic": TOPIC, "content": "id-only", "create": True}
                ]
            )
            receiver = bridge.connector.receiver
            assert receiver is not None
            await _wait_for(lambda: receiver.states["appts"].events_seen is not None)  # handshake
            # When staff book an appointment for a patient
            patient = await _patient(bridge.ehr)
            appt = await _create(bridge.ehr, _appointment(patient["id"], START))
            # Then it reaches the sink as a booked event with the patient's number, once
            await _wait_for(lambda: _events_for(bridge.sink, appt["id"]))
            message = next(
                m
                for m in bridge.sink.messages
                if m.source_id.startswith(f"Appointment/{appt['id']}")
            )
            assert message.source_id == f"Appointment/{appt['id']}/_history/1"
            assert message.sender == bridge.connector.settings.base_url
            event = message.translation.events[0].marshal()
            assert event["type"] == "appointment.booked"
            assert (
                event["patient"]["id"],
                event["patient"]["phone"],
                event["patient"]["language"],
            ) == (
                patient["id"],
                PHONE,
                "es",
            )
            assert receiver.states["appts"].events_seen == 1
            assert PHONE not in bridge.logs.getvalue() and "Synthetic" not in bridge.logs.getvalue()

    async def test_classic_full_resource_subscription_brings_the_cancellation(
        self, bridge_factory: Any
    ) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory(
                subscriptions=[
                    {
                        "id": "cancels",
                        "criteria": "Appointment?status=cancelled",
                        "content": "full-resource",
                        "create": True,
                    }
                ]
            )
            patient = await _patient(bridge.ehr)
            appt = await _create(bridge.ehr, _appointment(patient["id"], START))
            # When staff cancel it
            cancelled = {**appt, "status": "cancelled"}
            answer = await bridge.ehr.put(f"Appointment/{appt['id']}", json=cancelled)
            assert answer.status_code == 200
            # Then the server PUTs it to [endpoint]/Appointment/id and the bridge stores the event
            await _wait_for(lambda: "appointment.cancelled" in _events_for(bridge.sink, appt["id"]))
            assert bridge.sink.messages[-1].source_id == f"Appointment/{appt['id']}/_history/2"

    async def test_polling_finds_new_and_changed_appointments_once(
        self, bridge_factory: Any
    ) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory(poll_types=["Appointment"], poll_lookback_hours=0.05)
            patient = await _patient(bridge.ehr)
            appt = await _create(bridge.ehr, _appointment(patient["id"], START))
            # first poll: the new appointment, with its patient read from the server
            assert await bridge.connector.poll_once() >= 1
            assert _events_for(bridge.sink, appt["id"]) == ["appointment.booked"]
            assert bridge.sink.events[-1].marshal()["patient"]["phone"] == PHONE
            # second poll: the same version again (ge cursor) is a duplicate, no new event
            await bridge.connector.poll_once()
            assert IngestOutcome.DUPLICATE in bridge.sink.outcomes
            assert _events_for(bridge.sink, appt["id"]) == ["appointment.booked"]
            # staff move it: the next poll reports a reschedule
            moved = {
                **appt,
                "start": (START + timedelta(days=1)).isoformat(),
                "end": (START + timedelta(days=1, minutes=30)).isoformat(),
            }
            assert (
                await bridge.ehr.put(f"Appointment/{appt['id']}", json=moved)
            ).status_code == 200
            await bridge.connector.poll_once()
            assert _events_for(bridge.sink, appt["id"]) == [
                "appointment.booked",
                "appointment.rescheduled",
            ]
            cursor = await bridge.connector.cursors.get(
                f"fhir:{bridge.connector.settings.base_url}:Appointment"
            )
            assert cursor is not None and cursor.startswith(str(datetime.now(UTC).year))

    async def test_wrong_secret_is_refused_and_nothing_is_stored(self, bridge_factory: Any) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory(subscriptions=[{"id": "appts", "topic": TOPIC}])
            async with httpx.AsyncClient() as http:
                answer = await http.post(
                    f"{bridge.notify_url}/fhir/notify/appts",
                    content=b'{"resourceType": "Patient", "id": "x"}',
                    headers={"Authorization": "Bearer wrong"},
                )
            assert answer.status_code == 401 and answer.json()["error"] == "unauthorized"
            assert bridge.sink.messages == []


class TestWriteBack:
    async def _booked(self, bridge: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        patient = await _patient(bridge.ehr)
        appt = await _create(bridge.ehr, _appointment(patient["id"], START))
        return patient, appt

    def _ref(self, bridge: Any, appt: dict[str, Any], version: str | None = "1") -> AppointmentRef:
        return AppointmentRef(
            system=bridge.connector.settings.base_url, value=appt["id"], version=version
        )

    @pytest.mark.parametrize("mode", ["put", "patch"])
    async def test_confirm_sets_the_patient_participant_accepted_and_reads_back(
        self, bridge_factory: Any, mode: str
    ) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory(confirm_mode=mode)
            patient, appt = await self._booked(bridge)
            result = await bridge.connector.apply(
                ConfirmAppointment(
                    command_id="c1", appointment=self._ref(bridge, appt), patient_id=patient["id"]
                )
            )
            assert (result.applied, result.verified) == (True, True)
            stored = (await bridge.ehr.get(f"Appointment/{appt['id']}")).json()
            assert stored["participant"][0]["status"] == "accepted"
            assert stored["meta"]["versionId"] == "2"

    async def test_cancel_writes_status_and_reason_and_reads_back(
        self, bridge_factory: Any
    ) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory()
            patient, appt = await self._booked(bridge)
            result = await bridge.connector.apply(
                CancelAppointment(
                    command_id="c2", appointment=self._ref(bridge, appt), patient_id=patient["id"]
                )
            )
            assert (result.applied, result.verified) == (True, True)
            stored = (await bridge.ehr.get(f"Appointment/{appt['id']}")).json()
            assert stored["status"] == "cancelled"
            assert stored["cancelationReason"]["coding"][0]["code"] == "pat-crs"
            # applying it again is idempotent: already so, nothing written
            again = await bridge.connector.apply(
                CancelAppointment(
                    command_id="c2",
                    appointment=self._ref(bridge, appt, "2"),
                    patient_id=patient["id"],
                )
            )
            assert (
                again.verified
                and (await bridge.ehr.get(f"Appointment/{appt['id']}")).json()["meta"]["versionId"]
                == "2"
            )

    async def test_conflict_after_staff_moved_the_appointment_goes_to_a_human(
        self, bridge_factory: Any
    ) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory()
            patient, appt = await self._booked(bridge)
            # Given staff moved the appointment after the patient saw version 1
            moved = {
                **appt,
                "start": (START + timedelta(hours=2)).isoformat(),
                "end": (START + timedelta(hours=2, minutes=30)).isoformat(),
            }
            assert (
                await bridge.ehr.put(f"Appointment/{appt['id']}", json=moved)
            ).status_code == 200
            # When the patient's confirmation of version 1 is applied
            with pytest.raises(EHRRejected) as caught:
                await bridge.connector.apply(
                    ConfirmAppointment(
                        command_id="c3",
                        appointment=self._ref(bridge, appt),
                        patient_id=patient["id"],
                    )
                )
            # Then the server's 412 takes the conflict path and nothing is written
            assert caught.value.conflict is True
            stored = (await bridge.ehr.get(f"Appointment/{appt['id']}")).json()
            assert (
                stored["participant"][0]["status"] == "needs-action"
                and stored["meta"]["versionId"] == "2"
            )

    async def test_conflict_on_an_unrelated_change_is_reapplied(self, bridge_factory: Any) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory()
            patient, appt = await self._booked(bridge)
            assert (
                await bridge.ehr.put(
                    f"Appointment/{appt['id']}", json={**appt, "comment": "room changed"}
                )
            ).status_code == 200
            result = await bridge.connector.apply(
                ConfirmAppointment(
                    command_id="c4", appointment=self._ref(bridge, appt), patient_id=patient["id"]
                )
            )
            assert (result.applied, result.verified) == (True, True)
            stored = (await bridge.ehr.get(f"Appointment/{appt['id']}")).json()
            assert stored["meta"]["versionId"] == "3" and stored["comment"] == "room changed"

    async def test_free_slots_and_reschedule_to_one_of_them(self, bridge_factory: Any) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory()
            schedule = await _create(
                bridge.ehr,
                {"resourceType": "Schedule", "actor": [{"reference": "Practitioner/doc-1"}]},
            )
            base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)

            async def slot(offset_h: int, status: str) -> dict[str, Any]:
                return await _create(
                    bridge.ehr,
                    {
                        "resourceType": "Slot",
                        "schedule": {"reference": f"Schedule/{schedule['id']}"},
                        "status": status,
                        "start": (base + timedelta(hours=offset_h)).isoformat(),
                        "end": (base + timedelta(hours=offset_h, minutes=30)).isoformat(),
                    },
                )

            own = await slot(0, "busy")
            later, busy, sooner = (
                await slot(5, "free"),
                await slot(3, "busy"),
                await slot(2, "free"),
            )
            patient = await _patient(bridge.ehr)
            appt = await _create(
                bridge.ehr,
                _appointment(patient["id"], base, slot=[{"reference": f"Slot/{own['id']}"}]),
            )
            slots = await bridge.connector.free_slots(self._ref(bridge, appt), 5)
            assert [s.id for s in slots] == [sooner["id"], later["id"]]
            assert busy["id"] not in {s.id for s in slots}
            result = await bridge.connector.apply(
                RescheduleAppointment(
                    command_id="c5",
                    appointment=self._ref(bridge, appt),
                    patient_id=patient["id"],
                    slot=slots[0],
                )
            )
            assert (result.applied, result.verified) == (True, True)
            stored = (await bridge.ehr.get(f"Appointment/{appt['id']}")).json()
            assert datetime.fromisoformat(stored["start"]) == slots[0].start
            assert stored["slot"] == [{"reference": f"Slot/{sooner['id']}"}]

    async def test_confirm_by_appointment_response_is_created_once_and_read_back(
        self, bridge_factory: Any
    ) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory(confirm_mode="appointment-response")
            patient, appt = await self._booked(bridge)
            command = ConfirmAppointment(
                command_id="c6", appointment=self._ref(bridge, appt), patient_id=patient["id"]
            )
            first = await bridge.connector.apply(command)
            again = await bridge.connector.apply(command)  # a retried command: conditional create
            assert (first.applied, first.verified, again.verified) == (True, True, True)
            found = (
                await bridge.ehr.get(
                    "AppointmentResponse", params={"appointment": f"Appointment/{appt['id']}"}
                )
            ).json()
            assert [e["resource"]["participantStatus"] for e in found.get("entry", [])] == [
                "accepted"
            ]

    async def test_reschedule_in_task_mode_opens_a_task_for_staff(
        self, bridge_factory: Any
    ) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory(reschedule_mode="task")
            patient, appt = await self._booked(bridge)
            slot = FreeSlot(
                id="slot-x",
                start=START + timedelta(days=2),
                end=START + timedelta(days=2, minutes=30),
            )
            result = await bridge.connector.apply(
                RescheduleAppointment(
                    command_id="c7",
                    appointment=self._ref(bridge, appt),
                    patient_id=patient["id"],
                    slot=slot,
                )
            )
            assert (result.code, result.verified) == ("task", True)
            tasks = (
                await bridge.ehr.get("Task", params={"focus": f"Appointment/{appt['id']}"})
            ).json()
            assert [e["resource"]["status"] for e in tasks.get("entry", [])] == ["requested"]
            stored = (await bridge.ehr.get(f"Appointment/{appt['id']}")).json()
            assert stored["meta"]["versionId"] == "1"  # the appointment itself is left to staff

    async def test_communication_is_recorded_once_per_wamid(self, bridge_factory: Any) -> None:
        async with asyncio.timeout(TEST_TIMEOUT):
            bridge = await bridge_factory(record_communications=True)
            patient, appt = await self._booked(bridge)
            ids = [
                await bridge.connector.record_communication(
                    about=f"Appointment/{appt['id']}",
                    patient_id=patient["id"],
                    wamid="wamid.TEST123",
                )
                for _ in range(2)
            ]
            assert ids[0] is not None and ids[0] == ids[1]
            stored = (await bridge.ehr.get(f"Communication/{ids[0]}")).json()
            assert stored["about"] == [{"reference": f"Appointment/{appt['id']}"}]
            assert stored["identifier"][0]["value"] == "wamid.TEST123"
