"""The loop on a real store: EHR events → reminders → patient replies → EHR commands → answers.

Real SQLite, relay, event processor and engine; the EHR and WhatsApp are in-memory fakes of the
outside systems (bridge.testing).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from bridge.config import RelaySettings, Settings
from bridge.domain import (
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentInfo,
    AppointmentRescheduled,
    CancelAppointment,
    ConfirmAppointment,
    FreeSlot,
    InboundMessage,
    LabResultAvailable,
    PatientInfo,
    ReplyReceived,
    RescheduleAppointment,
    ResultInfo,
    SourceRef,
    Translation,
)
from bridge.domain.intents import classify_text, parse_button_payload
from bridge.engine.engine import Engine
from bridge.engine.mappings import MappingSet
from bridge.engine.processor import EventProcessor
from bridge.engine.relay import Relay
from bridge.errors import EHRRejected
from bridge.logging import get_logger
from bridge.metrics import Metrics
from bridge.store import AuditLog, InboxWriter, SqlOutbox
from bridge.store.tables import outbox
from bridge.testing import FixedClock, MemoryChannel, MemoryConnector

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 10:00 in Bogotá
START = NOW + timedelta(days=4, hours=-1)  # 09:00 Bogotá, four days later
PHONE = "+573001230042"


class Harness:
    def __init__(self, db, stack: AsyncExitStack, **engine_settings) -> None:
        self.db = db
        self.stack = stack
        self.clock = FixedClock(NOW)
        self.channel = MemoryChannel()
        self.ehr_connector = MemoryConnector(name="memory")
        self.settings = Settings(timezone="America/Bogota",
                                 engine={"jitter_minutes": 0, **engine_settings})
        self.outbox = SqlOutbox(db, self.clock)
        self.seq = 0

    async def start(self) -> Harness:
        client = httpx.AsyncClient()
        self.stack.push_async_callback(client.aclose)
        self.engine = Engine(settings=self.settings, db=self.db, clock=self.clock,
                             outbox=self.outbox, audit=AuditLog(self.db, self.clock),
                             connectors={"memory": self.ehr_connector},
                             mappings=MappingSet.default(), reply_key=b"r" * 32,
                             portal_key=b"p" * 32, http_client=client)
        self.relay = Relay(outbox=self.outbox,
                           channels={"whatsapp": self.channel, **self.engine.channels()},
                           clock=self.clock, settings=RelaySettings(), metrics=Metrics(),
                           log=get_logger(), prepare=self.engine.prepare,
                           after_release=self.engine.followups)
        self.processor = EventProcessor(self.db, self.clock, self.engine.handlers(), Metrics(),
                                        get_logger())
        self.writer = InboxWriter(self.db, self.clock)
        await self.writer.start(self.stack)
        return self

    async def ingest(self, *events, connector="memory") -> None:
        """The EHR (or WhatsApp) sends each event as one message; a re-sent message is a
        duplicate because its id and bytes are the same."""
        for evt in events:
            message_id = evt.source.message_id
            await self.writer.ingest(InboundMessage(
                connector=connector, sender="test", source_id=message_id,
                payload=message_id.encode(), translation=Translation(events=(evt,))))
        await self.settle()

    async def settle(self) -> None:
        for _ in range(30):
            if not (await self.processor.tick() + await self.relay.tick()):
                return
        raise AssertionError("the loop did not settle")

    async def later(self, delta: timedelta) -> None:
        self.clock.advance(delta)
        await self.settle()

    async def tap(self, payload: str, address: str = PHONE) -> None:
        parsed = parse_button_payload(payload)
        assert parsed is not None, payload
        intent, token = parsed
        await self.reply(intent, token=token, address=address)

    async def text(self, words: str, address: str = PHONE) -> None:
        await self.reply(classify_text(words), text=words, address=address)

    async def reply(self, intent: str, *, token=None, text=None, address=PHONE) -> None:
        self.seq += 1
        evt = ReplyReceived(source=SourceRef(connector="whatsapp", message_id=f"w{self.seq}"),
                            message_id=f"wamid.in{self.seq}", channel_user=address,
                            intent=intent, token=token, text=text, occurred_at=self.clock.now())
        await self.ingest(evt, connector="whatsapp")

    def last(self, kind: str | None = None):
        sent = [n for n in self.channel.sent if kind is None or n.kind == kind]
        assert sent, f"nothing of kind {kind} sent"
        return sent[-1]


def booked(appointment_id="A1", start=START, cls=AppointmentBooked, status="booked",
           phone=PHONE, message_id=None):
    message_id = message_id or f"{cls.__name__}-{appointment_id}-{start.isoformat()}"
    return cls(source=SourceRef(connector="memory", message_id=message_id),
               appointment=AppointmentInfo(id=appointment_id, status=status, start=start,
                                           end=start + timedelta(minutes=30), system="his",
                                           location="Sede Norte"),
               patient=PatientInfo(id="P1", phone=phone, language="es", given_name="Ana María"),
               occurred_at=NOW)


def button(notification, intent: str) -> str:
    """The payload of the button for ``intent`` in a sent template or interactive message."""
    content = notification.content
    if notification.kind == "template":
        for b in content["buttons"]:
            if b.get("payload", "").startswith(f"{intent}."):
                return b["payload"]
    for b in content.get("buttons", []):
        if b["id"].startswith(f"{intent}."):
            return b["id"]
    raise AssertionError(f"no {intent} button in {notification.kind}")


@pytest.fixture(name="h")
async def _harness(sqlite_db):
    async with AsyncExitStack() as stack:
        yield await Harness(sqlite_db, stack).start()


async def reminder_rows(h):
    async with h.db.read() as conn:
        return (await conn.execute(select(outbox.c.state, outbox.c.due_at, outbox.c.payload)
                                   .where(outbox.c.kind == "reminder")
                                   .order_by(outbox.c.due_at))).all()


class TestReminders:
    async def test_a_booking_plans_two_reminders_outside_quiet_hours(self, h):
        await h.ingest(booked())
        rows = await reminder_rows(h)
        assert [r.due_at for r in rows] == [START - timedelta(hours=72),
                                            START - timedelta(hours=24)]
        assert h.channel.sent == []

    async def test_the_reminder_is_the_template_with_three_signed_buttons(self, h):
        await h.ingest(booked())
        await h.later(timedelta(days=1, minutes=1))
        sent = h.last("template")
        assert sent.to == PHONE
        assert sent.content["name"] == "appointment_reminder"
        assert sent.content["body"][0] == "Ana"
        assert "Sede Norte" in sent.content["body"]
        intents = sorted(b["payload"].split(".")[0] for b in sent.content["buttons"])
        assert intents == ["cancel", "confirm", "reschedule"]
        assert all("A1" not in b["payload"] for b in sent.content["buttons"])

    async def test_a_moved_appointment_never_gets_the_old_reminder(self, h):
        await h.ingest(booked())
        moved = START + timedelta(days=2)
        await h.ingest(booked(start=moved, cls=AppointmentRescheduled))
        rows = await reminder_rows(h)
        pending = [r for r in rows if r.state == "pending"]
        assert {r.payload["planned_start"] for r in pending} == {moved.isoformat()}
        await h.later(timedelta(days=3, hours=1))  # the moved appointment's 72 h reminder
        sent = [r for r in await reminder_rows(h) if r.state == "sent"]
        assert sent and {r.payload["planned_start"] for r in sent} == {moved.isoformat()}

    async def test_a_cancelled_appointment_gets_no_reminder(self, h):
        await h.ingest(booked())
        await h.ingest(booked(cls=AppointmentCancelled, status="cancelled"))
        await h.later(timedelta(days=5))
        assert h.channel.sent == []


class TestReplies:
    async def test_confirm_reaches_the_ehr_once_and_the_patient_is_told(self, h):
        await h.ingest(booked())
        await h.later(timedelta(days=1, minutes=1))
        payload = button(h.last("template"), "confirm")
        await h.tap(payload)
        await h.tap(payload)  # a double tap
        assert [type(c) for c in h.ehr_connector.applied] == [ConfirmAppointment]
        assert h.ehr_connector.applied[0].appointment.value == "A1"
        assert h.last().kind == "text"

    async def test_cancel_asks_first_then_cancels_and_drops_the_reminders(self, h):
        await h.ingest(booked())
        await h.later(timedelta(days=1, minutes=1))
        await h.tap(button(h.last("template"), "cancel"))
        question = h.last("buttons")
        assert h.ehr_connector.applied == []
        await h.tap(button(question, "cancel"))  # the "yes, cancel" button
        assert [type(c) for c in h.ehr_connector.applied] == [CancelAppointment]
        assert all(r.state != "pending" for r in await reminder_rows(h))

    async def test_keeping_the_appointment_changes_nothing_and_says_so(self, h):
        await h.ingest(booked())
        await h.later(timedelta(days=1, minutes=1))
        await h.tap(button(h.last("template"), "cancel"))
        question = h.last("buttons")
        keep = [b["id"] for b in question.content["buttons"] if b["id"].endswith("~no")]
        await h.tap(keep[0])
        assert h.ehr_connector.attempts == []
        assert h.last().kind == "text"
        assert [r.state for r in await reminder_rows(h)] == ["sent", "pending"]

    async def test_reschedule_offers_slots_and_books_the_chosen_one(self, h):
        slot = FreeSlot(id="S9", start=START + timedelta(days=1),
                        end=START + timedelta(days=1, minutes=30))
        h.ehr_connector.slots = [slot]
        await h.ingest(booked())
        await h.later(timedelta(days=1, minutes=1))
        await h.tap(button(h.last("template"), "reschedule"))
        offer = h.last("list")
        row_id = offer.content["sections"][0]["rows"][0]["id"]
        await h.tap(row_id)
        [command] = h.ehr_connector.applied
        assert isinstance(command, RescheduleAppointment) and command.slot.id == "S9"

    async def test_a_refused_change_tells_the_patient_and_hands_over(self, h):
        h.ehr_connector.script.append(EHRRejected("memory", "AR", "refused"))
        await h.ingest(booked())
        await h.later(timedelta(days=1, minutes=1))
        await h.tap(button(h.last("template"), "confirm"))
        assert h.ehr_connector.applied == []
        conversation = await h.engine.conversations.get(PHONE)
        assert conversation is not None and conversation.mode == "handoff"

    async def test_a_forged_token_changes_nothing_and_gets_an_answer(self, h):
        await h.ingest(booked())
        await h.later(timedelta(days=1, minutes=1))
        real = button(h.last("template"), "confirm")
        forged = real[:-2] + ("AA" if not real.endswith("AA") else "BB")
        before = len(h.channel.sent)
        await h.tap(forged)
        assert h.ehr_connector.applied == []
        assert len(h.channel.sent) == before + 1

    async def test_free_text_confirm_is_tied_to_the_next_appointment(self, h):
        await h.ingest(booked())
        await h.text("Sí, confirmo")
        assert [type(c) for c in h.ehr_connector.applied] == [ConfirmAppointment]

    async def test_three_replies_not_understood_hand_the_conversation_to_a_person(self, h):
        await h.ingest(booked())
        for words in ("qué?", "mmm", "no sé"):
            await h.text(words)
        conversation = await h.engine.conversations.get(PHONE)
        assert conversation.mode == "handoff"
        sent_before = len(h.channel.sent)
        await h.text("hola?")  # the bot stays silent while staff have it
        assert len(h.channel.sent) == sent_before


class TestConsent:
    async def test_stop_gets_one_acknowledgement_and_then_nothing(self, h):
        await h.ingest(booked())
        await h.text("STOP")
        ack = h.last()
        assert ack.kind == "text"
        count = len(h.channel.sent)
        await h.later(timedelta(days=5))
        await h.text("confirmo")
        assert len(h.channel.sent) == count
        assert h.ehr_connector.applied == []


class TestResults:
    async def test_a_final_result_sends_a_portal_link_without_content(self, h):
        evt = LabResultAvailable(source=SourceRef(connector="memory", message_id="R1"),
                                 result=ResultInfo(id="ORD77", status="final", system="lab"),
                                 patient=PatientInfo(id="P1", phone=PHONE, language="en",
                                                     given_name="Ana"), occurred_at=NOW)
        await h.ingest(evt)
        sent = h.last("template")
        assert sent.content["name"] == "results_ready"
        [url_button] = [b for b in sent.content["buttons"] if b["sub_type"] == "url"]
        assert h.engine.portal.verify(url_button["text"], NOW) == "ORD77"
        assert "ORD77" not in str(sent.content)


class TestSurvey:
    async def test_a_fulfilled_appointment_gets_a_rating_question_counted_in_the_report(
            self, sqlite_db):
        """Inside the 24 h window the survey is an interactive list (no template needed)."""
        await self._rated(sqlite_db)

    async def test_outside_the_window_the_survey_is_skipped_not_rejected_by_meta(
            self, sqlite_db):
        async with AsyncExitStack() as stack:
            h = await Harness(sqlite_db, stack, survey_enabled=True).start()
            from bridge.domain import AppointmentUpdated

            await h.ingest(booked())
            await h.ingest(booked(cls=AppointmentUpdated, status="fulfilled"))
            await h.later(timedelta(hours=3))
            assert [n.kind for n in h.channel.sent] == []
            async with h.db.read() as conn:
                skipped = (await conn.execute(select(outbox.c.last_error)
                                              .where(outbox.c.kind == "survey"))).scalar_one()
            assert skipped == "window_closed"

    async def _rated(
            self, sqlite_db):
        from bridge.domain import AppointmentUpdated
        from bridge.store.reports import build_report

        async with AsyncExitStack() as stack:
            h = await Harness(sqlite_db, stack, survey_enabled=True).start()
            await h.ingest(booked())
            await h.text("confirmo")  # the patient wrote today: the 24 h window is open
            await h.ingest(booked(cls=AppointmentUpdated, status="fulfilled"))
            await h.later(timedelta(hours=3))
            survey = h.last("list")
            rows = survey.content["sections"][0]["rows"]
            await h.tap(next(r["id"] for r in rows if r["id"].endswith("~5")))
            report = await build_report(sqlite_db, NOW - timedelta(days=1),
                                        NOW + timedelta(days=9))
            by_clinic = {r.clinic: r for r in report}
            assert by_clinic["Sede Norte"].ratings == [5]
            assert by_clinic["Sede Norte"].row()["survey_avg"] == 5
