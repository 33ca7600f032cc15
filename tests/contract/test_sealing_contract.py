"""Encryption at rest on SQLite and PostgreSQL: with a data key the whole loop runs, lookups by
phone still work, and no column of any table holds a patient's phone or name in clear.

The loop is the real one in-process: a raw HL7 SIU translated by the HL7 connector's own code,
the inbox writer, event processor, engine and relay; WhatsApp and the EHR are the in-memory fakes
(bridge.testing). A plain database sealed later by ``bridge db seal``'s code must end the same
way, and a sealed database refuses a daemon without its key.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from sqlalchemy import select

from bridge.config import RelaySettings, Settings
from bridge.domain import (
    InboundMessage,
    LabResultAvailable,
    PatientInfo,
    ReplyReceived,
    ResultInfo,
    SourceRef,
    Translation,
)
from bridge.domain.intents import classify_text, parse_button_payload
from bridge.engine.engine import Engine
from bridge.engine.mappings import MappingSet
from bridge.engine.processor import EventProcessor
from bridge.engine.relay import Relay
from bridge.errors import ConfigError
from bridge.logging import get_logger
from bridge.metrics import Metrics
from bridge.store import AuditLog, InboxWriter, SqlOutbox
from bridge.store.data_key import KeyStatus, ensure_data_key, key_status, seal_database
from bridge.store.reports import build_report
from bridge.store.sealing import PLAIN, DataCipher
from bridge.store.tables import audit, metadata, outbox
from bridge.testing import FixedClock, MemoryChannel, MemoryConnector
from connectors.hl7v2 import inspect as translate_hl7

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
START = NOW + timedelta(days=4)
PHONE = "+573001230042"
OTHER_PHONE = "+573001230099"
KEY = DataCipher(bytes(range(32)))
ANOTHER_KEY = DataCipher(bytes(range(1, 33)))
#: What must never be found in clear: the phones' national digits (any formatting), the names
#: (UTF-8, and JSON's \\u escapes of the accented letters)
NEEDLES = (
    b"3001230042",
    b"3001230099",
    "Ana María".encode(),
    b"Ana Mar",
    "Ríos".encode(),
    b"R\\u00edos",
)


def siu(control: str, appointment: str, start: datetime, phone: str = PHONE) -> bytes:
    ts = start.strftime("%Y%m%d%H%M%S")
    end = (start + timedelta(minutes=30)).strftime("%Y%m%d%H%M%S")
    return "\r".join(
        [
            f"MSH|^~\\&|TESTHIS|CLINIC|BRIDGE|CLINIC|20261123100000||SIU^S12^SIU_S12|{control}|P|2.5",
            (
                f"SCH|{appointment}^HIS|{appointment}^HIS|||||ROUTINE||30|MIN|^^30^{ts}^{end}"
                "|||||||||||||Booked"
            ),
            f"TQ1|1||||||{ts}|{end}",
            f"PID|1||MRN77^^^HIS^MR||Ríos^Ana María||19800101|F|||||^PRN^CP^^^^^^^^^{phone}|||es",
            "RGS|1|A",
            f"AIL|1|A|SEDE^^^CLINIC^^^^^Sede Norte|||{ts}|||30|MIN",
        ]
    ).encode()


class Loop:
    """The bridge's loop on ``db`` with ``cipher``, fakes for WhatsApp and the EHR."""

    def __init__(self, db, stack: AsyncExitStack, cipher: DataCipher) -> None:
        self.db, self.stack, self.cipher = db, stack, cipher
        self.clock = FixedClock(NOW)
        self.channel = MemoryChannel()
        self.ehr = MemoryConnector(name="hl7v2")
        self.seq = 0

    async def start(self) -> Loop:
        client = httpx.AsyncClient()
        self.stack.push_async_callback(client.aclose)
        settings = Settings(
            timezone="America/Bogota",
            engine={"jitter_minutes": 0, "quiet_hours_start": "00:00", "quiet_hours_end": "00:00"},
        )
        self.outbox = SqlOutbox(self.db, self.clock, self.cipher)
        self.engine = Engine(
            settings=settings,
            db=self.db,
            clock=self.clock,
            outbox=self.outbox,
            audit=AuditLog(self.db, self.clock),
            connectors={"hl7v2": self.ehr},
            mappings=MappingSet.default(),
            reply_key=b"r" * 32,
            portal_key=b"p" * 32,
            http_client=client,
            cipher=self.cipher,
        )
        self.relay = Relay(
            outbox=self.outbox,
            channels={"whatsapp": self.channel, **self.engine.channels()},
            clock=self.clock,
            settings=RelaySettings(),
            metrics=Metrics(),
            log=get_logger(),
            prepare=self.engine.prepare,
            after_release=self.engine.followups,
        )
        self.processor = EventProcessor(
            self.db, self.clock, self.engine.handlers(), Metrics(), get_logger(), cipher=self.cipher
        )
        self.writer = InboxWriter(self.db, self.clock, self.cipher)
        await self.writer.start(self.stack)
        return self

    async def his_sends(self, frame: bytes, control: str) -> None:
        translation = translate_hl7(frame, tz="America/Bogota", region="CO")
        assert translation.events and not translation.fatal, translation.problems
        await self.writer.ingest(
            InboundMessage(
                connector="hl7v2",
                sender="TESTHIS|CLINIC",
                source_id=control,
                payload=frame,
                translation=translation,
            )
        )
        await self.settle()

    async def patient(
        self, *, text: str | None = None, button: str | None = None, phone: str = PHONE
    ) -> None:
        """A patient's message, stored raw as WhatsApp would send it (phone and profile name)."""
        self.seq += 1
        if button is not None:
            parsed = parse_button_payload(button)
            assert parsed is not None
            intent, token = parsed
        else:
            intent, token = classify_text(text or ""), None
        evt = ReplyReceived(
            source=SourceRef(connector="whatsapp", message_id=f"w{self.seq}"),
            message_id=f"wamid.in{self.seq}",
            channel_user=phone,
            intent=intent,
            token=token,
            text=text,
            occurred_at=self.clock.now(),
        )
        body = orjson.dumps(
            {
                "contacts": [{"wa_id": phone.lstrip("+"), "profile": {"name": "Ana María Ríos"}}],
                "messages": [{"from": phone.lstrip("+"), "text": text, "button": button}],
            }
        )
        await self.writer.ingest(
            InboundMessage(
                connector="whatsapp",
                sender="PNID",
                source_id=f"w{self.seq}",
                payload=body,
                translation=Translation(events=(evt,)),
            )
        )
        await self.settle()

    async def result_ready(self) -> None:
        evt = LabResultAvailable(
            source=SourceRef(connector="hl7v2", message_id="R1"),
            result=ResultInfo(id="LAB1", status="final", system="his"),
            patient=PatientInfo(id="MRN77", phone=PHONE, language="es", given_name="Ana María"),
            occurred_at=self.clock.now(),
        )
        await self.writer.ingest(
            InboundMessage(
                connector="hl7v2",
                sender="TESTHIS|CLINIC",
                source_id="R1",
                payload=b"ORU Ana Mar\xc3\xada",
                translation=Translation(events=(evt,)),
            )
        )
        await self.settle()

    async def settle(self) -> None:
        for _ in range(30):
            if not (await self.processor.tick() + await self.relay.tick()):
                return
        raise AssertionError("the loop did not settle")

    async def later(self, delta: timedelta) -> None:
        self.clock.advance(delta)
        await self.settle()

    def sent_to(self, phone: str, kind: str | None = None) -> list:
        return [n for n in self.channel.sent if n.to == phone and kind in (None, n.kind)]


def button(notification, intent: str) -> str:
    for b in notification.content.get("buttons", []):
        payload = b.get("payload") or b.get("id") or ""
        if payload.startswith(f"{intent}."):
            return payload
    raise AssertionError(f"no {intent} button")


async def run_the_loop(loop: Loop) -> None:
    """Booking, reminder, confirm, a stranger's tap, a person asked for, opt-out, a result."""
    # Given the HIS books an appointment over HL7
    await loop.his_sends(siu("C1", "A1", START), "C1")
    # When the 72 h reminder is due, it reaches the patient's phone with their first name
    await loop.later(timedelta(days=1, hours=6))  # SIU times are Bogotá time (UTC-5)
    [reminder] = loop.sent_to(PHONE, "template")
    assert reminder.content["name"] == "appointment_reminder"
    assert reminder.content["body"][0].startswith("Ana")
    # When the patient confirms, the EHR gets the command and the patient is told
    await loop.patient(button=button(reminder, "confirm"))
    assert [c.kind for c in loop.ehr.applied] == ["confirm"]
    assert loop.sent_to(PHONE, "text"), "the confirmation text"
    # A tap on the same button from another phone is not taken as the patient's
    await loop.patient(button=button(reminder, "cancel"), phone=OTHER_PHONE)
    assert [c.kind for c in loop.ehr.applied] == ["confirm"]
    # The patient asks for a person, then opts out; a final result arrives later
    await loop.patient(text="quiero hablar con un humano")
    await loop.patient(text="STOP")
    await loop.result_ready()


async def clear_phi(db, *, skip: tuple[str, ...] = ()) -> list[str]:
    """``table.column`` of every text, binary or JSON value holding a needle in clear."""
    found = set()
    async with db.read() as conn:
        for table in metadata.sorted_tables:
            if table.name in skip:
                continue
            for row in (await conn.execute(select(table))).all():
                for column, value in zip(table.columns, row, strict=True):
                    if isinstance(value, bytes | bytearray | memoryview):
                        data = bytes(value)
                    elif isinstance(value, str):
                        data = value.encode()
                    elif isinstance(value, dict | list):
                        data = orjson.dumps(value)
                    else:
                        continue
                    if any(needle in data for needle in NEEDLES):
                        found.add(f"{table.name}.{column.name}")
    return sorted(found)


async def assert_lookups_work(loop: Loop) -> None:
    """Every lookup by phone still finds the patient, and values come back in clear."""
    engine = loop.engine
    assert await engine.consent.opted_out(PHONE)
    assert not await engine.consent.opted_out(OTHER_PHONE)
    conversation = await engine.conversations.get(PHONE)
    assert conversation is not None and conversation.address == PHONE
    assert [c.address for c in await engine.conversations.in_handoff()] == [PHONE]
    [upcoming] = await engine.appointments.upcoming_for(PHONE, loop.clock.now())
    assert upcoming.info.id == "A1"
    assert upcoming.patient.phone == PHONE and upcoming.patient.given_name == "Ana María"
    exported = [(e.address, e.action) async for e in engine.consent.export()]
    assert exported == [(PHONE, "opt_out")]
    async with loop.db.read() as conn:
        unmatched = (
            (await conn.execute(select(audit.c.detail).where(audit.c.action == "reply.unmatched")))
            .scalars()
            .all()
        )
    assert [d["reason"] for d in unmatched] == ["other_recipient"]


@pytest.fixture(name="stack")
async def _stack():
    async with AsyncExitStack() as stack:
        yield stack


class TestSealedFromTheStart:
    async def test_the_loop_runs_and_no_column_holds_a_phone_or_name_in_clear(self, db, stack):
        loop = await Loop(db, stack, KEY).start()
        await run_the_loop(loop)
        await assert_lookups_work(loop)
        assert await clear_phi(db) == []

    async def test_without_a_key_the_same_loop_leaves_phones_and_names_in_clear(self, db, stack):
        """The scan above can fail: plain storage is found by it, table by table."""
        loop = await Loop(db, stack, PLAIN).start()
        await run_the_loop(loop)
        await assert_lookups_work(loop)
        found = await clear_phi(db)
        for column in (
            "appointment.address",
            "appointment.given_name",
            "consent.address",
            "conversation.address",
            "outbox.payload",
            "outbox.recipient_key",
            "event.payload",
            "inbox.payload",
            "audit.subject",
        ):
            assert column in found

    async def test_sealed_outbox_rows_reach_the_relay_and_reports_open(self, db, stack):
        loop = await Loop(db, stack, KEY).start()
        await run_the_loop(loop)
        async with db.read() as conn:
            payloads = (await conn.execute(select(outbox.c.payload))).scalars().all()
        assert payloads and all(set(p) == {"sealed"} for p in payloads)
        reports = await build_report(db, NOW - timedelta(days=1), NOW + timedelta(days=9), KEY)
        clinic = {r.clinic: r for r in reports}["Sede Norte"]
        # the patient is recognised across tables by the lookup hash, as by the phone before
        assert (clinic.confirmed, clinic.opt_outs, clinic.handoffs) == (1, 1, 1)


class TestSealingAPlainDatabase:
    async def test_seal_converts_every_row_and_the_loop_goes_on_sealed(self, db, stack):
        # Given a database that ran plain
        await run_the_loop(await Loop(db, stack, PLAIN).start())
        # When it is sealed
        counts = await seal_database(db, KEY, FixedClock(NOW), batch=3)  # several batches
        # Then nothing but the hash-chained audit log holds a phone or name in clear
        assert await clear_phi(db, skip=("audit",)) == []
        assert counts.tables["appointment"] == 1 and counts.tables["consent"] == 1
        assert counts.tables["outbox"] >= 5 and counts.tables["inbox"] >= 6
        assert (await AuditLog(db, FixedClock(NOW)).verify()).ok  # the audit log is untouched
        # and lookups by phone find the converted rows
        loop = await Loop(db, stack, KEY).start()
        await assert_lookups_work(loop)
        # and the loop goes on: the patient opts back in and is answered on their phone
        loop.seq = 100  # a new WhatsApp message, not one the first loop handled
        loop.clock.advance(timedelta(days=2))  # past the first loop processor's leader lease
        await loop.patient(text="START")
        assert len(loop.sent_to(PHONE)) == 1
        assert not await loop.engine.consent.opted_out(PHONE)
        assert await clear_phi(db, skip=("audit",)) == []

    async def test_sealing_again_converts_nothing(self, db, stack):
        await run_the_loop(await Loop(db, stack, PLAIN).start())
        first = await seal_database(db, KEY, FixedClock(NOW))
        again = await seal_database(db, KEY, FixedClock(NOW))
        assert first.total > 0 and again.total == 0
        assert await key_status(db, KEY) is KeyStatus.SEALED

    async def test_seal_refuses_without_a_key(self, db):
        with pytest.raises(ValueError, match="needs a data key"):
            await seal_database(db, PLAIN, FixedClock(NOW))


class TestTheKeyIsChecked:
    async def test_a_plain_database_without_a_key_is_plain(self, db):
        assert await key_status(db, PLAIN) is KeyStatus.PLAIN

    async def test_a_sealed_database_refuses_to_start_without_its_key(self, db, stack):
        await run_the_loop(await Loop(db, stack, KEY).start())
        await seal_database(db, KEY, FixedClock(NOW))
        with pytest.raises(ConfigError, match="no data key is configured"):
            await ensure_data_key(db, PLAIN, FixedClock(NOW), seal=True)

    async def test_a_sealed_database_refuses_another_key(self, db):
        await seal_database(db, KEY, FixedClock(NOW))
        with pytest.raises(ConfigError, match="not the key this database was sealed with"):
            await ensure_data_key(db, ANOTHER_KEY, FixedClock(NOW), seal=True)
        with pytest.raises(ConfigError):
            await seal_database(db, ANOTHER_KEY, FixedClock(NOW))

    async def test_a_key_on_a_plain_database_seals_it_at_start_or_asks_for_bridge_db_seal(
        self, db, stack
    ):
        await run_the_loop(await Loop(db, stack, PLAIN).start())
        with pytest.raises(ConfigError, match="bridge db seal"):
            await ensure_data_key(db, KEY, FixedClock(NOW), seal=False)
        assert await ensure_data_key(db, KEY, FixedClock(NOW), seal=True) is KeyStatus.SEALED
        assert await clear_phi(db, skip=("audit",)) == []

    async def test_an_interrupted_seal_still_locks_out_a_keyless_daemon(self, db):
        """The database is marked before rows are converted: a half-sealed database never
        meets a daemon without the key."""
        from bridge.store.data_key import _mark

        await _mark(db, KEY, FixedClock(NOW), "sealing")
        with pytest.raises(ConfigError):
            await key_status(db, PLAIN)
        assert await key_status(db, KEY) is KeyStatus.UNSEALED
