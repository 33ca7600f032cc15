"""Property: whatever the EHR sends, in any order and with duplicates, no reminder goes out for a
cancelled appointment or for the old time of a moved one, and every booked future appointment
has its reminders planned.
"""

from __future__ import annotations

import asyncio
import tempfile
from contextlib import AsyncExitStack
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bridge.domain import (
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentDeleted,
    AppointmentNoShow,
    AppointmentRescheduled,
    AppointmentUpdated,
)
from bridge.store import Database
from bridge.store.migrate import upgrade
from bridge.store.tables import outbox
from tests.integration.test_engine_loop import START, Harness, booked

KINDS = {
    "booked": (AppointmentBooked, "booked"),
    "rescheduled": (AppointmentRescheduled, "booked"),
    "updated": (AppointmentUpdated, "booked"),
    "cancelled": (AppointmentCancelled, "cancelled"),
    "deleted": (AppointmentDeleted, "entered-in-error"),
    "noshow": (AppointmentNoShow, "noshow"),
}
STARTS = [START, START + timedelta(days=1, hours=3), START + timedelta(hours=30)]

operations = st.lists(
    st.tuples(
        st.sampled_from(sorted(KINDS)),         # what the EHR says
        st.sampled_from(["A1", "A2"]),          # about which appointment
        st.integers(0, len(STARTS) - 1),        # with which start time
        st.integers(0, 30),                     # hours that pass before the next message
        st.booleans(),                          # sent twice (a duplicate)
    ),
    min_size=1, max_size=8,
)


async def scenario(ops) -> None:
    with tempfile.TemporaryDirectory() as folder:
        db = Database(f"sqlite:///{folder}/p.db", sqlite_synchronous="OFF")
        await upgrade(db)
        async with AsyncExitStack() as stack:
            h = await Harness(db, stack).start()
            state: dict[str, tuple[str, object]] = {}
            seen: set[int] = set()

            async def check_new_sends() -> None:
                """Every reminder sent since the last check matches the state in force now."""
                async with db.read() as conn:
                    sent = (await conn.execute(select(outbox).where(
                        outbox.c.kind == "reminder", outbox.c.state == "sent"))).all()
                for row in sent:
                    if row.id in seen:
                        continue
                    seen.add(row.id)
                    status, start = state[row.subject_key.rsplit("|", 1)[1]]
                    assert status == "booked", f"reminder sent for a {status} appointment"
                    assert row.payload["planned_start"] == start.isoformat(), "old time reminded"

            for n, (kind, appointment_id, start_index, hours, twice) in enumerate(ops):
                cls, status = KINDS[kind]
                evt = booked(appointment_id, STARTS[start_index], cls=cls, status=status,
                             message_id=f"op{n}")
                # the relay runs between messages: what it sent so far was under the old state
                await h.settle()
                await check_new_sends()
                state[appointment_id] = (status, STARTS[start_index])
                await h.ingest(evt)
                if twice:
                    await h.ingest(evt)
                await check_new_sends()
                await h.later(timedelta(hours=hours))
                await check_new_sends()
            # every booked future appointment has its reminders planned
            async with db.read() as conn:
                rows = (await conn.execute(select(outbox).where(outbox.c.kind == "reminder"))).all()
            for appointment_id, (status, start) in state.items():
                mine = [r for r in rows if r.subject_key == f"appointment:his|{appointment_id}"]
                live = [r for r in mine if r.state in ("pending", "sent")
                        and r.payload["planned_start"] == start.isoformat()]
                if status == "booked" and start - timedelta(hours=1) > h.clock.now():
                    assert live, f"{appointment_id} booked for {start} has no reminder"
                if status != "booked":
                    assert not [r for r in mine if r.state == "pending"]
            # let everything due go out under the final state
            await h.later(timedelta(days=8))
            await check_new_sends()
        await db.dispose()


class TestReminderPlanningProperty:
    @settings(max_examples=25, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(operations)
    def test_no_reminder_for_cancelled_or_moved_appointments_and_none_missing(self, ops):
        asyncio.run(scenario(ops))
