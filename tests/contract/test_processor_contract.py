"""The event processor: in order, poison events isolated, one leader among daemons."""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bridge.domain import (
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentInfo,
    InboundMessage,
    PatientInfo,
    SourceRef,
    Translation,
)
from bridge.engine.processor import HOLD, EventProcessor
from bridge.logging import get_logger
from bridge.metrics import Metrics
from bridge.store import InboxWriter
from bridge.store.tables import event
from bridge.testing import FixedClock

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def appointment_event(cls, n: int, appointment: str):
    return cls(source=SourceRef(connector="hl7v2", message_id=f"M{n}"),
               appointment=AppointmentInfo(id=appointment, status="booked"),
               patient=PatientInfo(id="P"), occurred_at=NOW)


async def store_events(db, events) -> None:
    async with AsyncExitStack() as stack:
        writer = InboxWriter(db, FixedClock(NOW))
        await writer.start(stack)
        for evt in events:
            message_id = evt.source.message_id
            await writer.ingest(InboundMessage(connector="hl7v2", sender="HIS",
                                               source_id=message_id, payload=message_id.encode(),
                                               translation=Translation(events=(evt,))))


async def states(db) -> list[str]:
    async with db.read() as conn:
        return list((await conn.execute(select(event.c.state).order_by(event.c.seq))).scalars())


class TestEventProcessor:
    async def test_events_reach_handlers_in_arrival_order_and_are_marked_done(self, db):
        seen: list[str] = []

        async def handler(evt):
            seen.append(f"{evt.type}:{evt.source.message_id}")

        await store_events(db, [appointment_event(AppointmentBooked, 0, "A"),
                                appointment_event(AppointmentCancelled, 1, "A")])
        processor = EventProcessor(db, FixedClock(NOW), {"appointment.booked": handler,
                                                         "appointment.cancelled": handler},
                                   Metrics(), get_logger())
        assert await processor.tick() == 2
        assert seen == ["appointment.booked:M0", "appointment.cancelled:M1"]
        assert await states(db) == ["done", "done"]
        assert await processor.tick() == 0

    async def test_a_failing_handler_marks_only_its_event_failed(self, db):
        async def handler(evt):
            if evt.source.message_id == "M0":
                raise RuntimeError("poison")

        await store_events(db, [appointment_event(AppointmentBooked, i, f"A{i}") for i in range(3)])
        processor = EventProcessor(db, FixedClock(NOW), {"appointment.booked": handler},
                                   Metrics(), get_logger())
        await processor.tick()
        assert await states(db) == ["failed", "done", "done"]

    async def test_held_events_come_back_later(self, db):
        calls = []

        async def handler(evt):
            calls.append(evt.event_id)
            return HOLD if len(calls) == 1 else None

        clock = FixedClock(NOW)
        await store_events(db, [appointment_event(AppointmentBooked, 0, "A")])
        processor = EventProcessor(db, clock, {"appointment.booked": handler}, Metrics(),
                                   get_logger())
        await processor.tick()
        assert await states(db) == ["held"]
        assert await processor.tick() == 0
        clock.advance(timedelta(seconds=6))
        await processor.tick()
        assert await states(db) == ["done"] and len(calls) == 2

    async def test_only_one_of_two_processors_leads(self, db):
        clock = FixedClock(NOW)
        await store_events(db, [appointment_event(AppointmentBooked, 0, "A")])
        first = EventProcessor(db, clock, {}, Metrics(), get_logger())
        second = EventProcessor(db, clock, {}, Metrics(), get_logger())
        assert await first.tick() == 1
        assert await second.tick() == 0
        clock.advance(timedelta(seconds=20))  # the first one stopped renewing
        await store_events(db, [appointment_event(AppointmentBooked, 9, "B")])
        assert await second.tick() == 1
