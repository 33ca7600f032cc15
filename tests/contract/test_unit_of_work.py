"""The SQLite fast paths: one unit of work per processor batch, inline statements, raw inbox SQL.

What they must keep (DESIGN.md §3): a failing handler undoes only its own writes, the inbox's
acknowledgements never wait for a whole batch of event processing, reads inside a unit see its
writes, and the raw inbox statements store exactly what the SQLAlchemy statements store.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from bridge.domain import (
    AppointmentBooked,
    AppointmentInfo,
    InboundMessage,
    IngestOutcome,
    PatientInfo,
    Problem,
    SourceRef,
    Translation,
)
from bridge.engine.processor import EventProcessor
from bridge.logging import get_logger
from bridge.metrics import Metrics
from bridge.store import Database, InboxWriter
from bridge.store import inbox as inbox_module
from bridge.store.consent import ConsentLedger
from bridge.store.kv import KvState
from bridge.store.migrate import upgrade
from bridge.store.tables import event, kv
from bridge.testing import FixedClock

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


def booked(n: int) -> AppointmentBooked:
    return AppointmentBooked(
        source=SourceRef(connector="hl7v2", message_id=f"M{n}"),
        appointment=AppointmentInfo(id=f"A{n}", status="booked", start=NOW + timedelta(days=2)),
        patient=PatientInfo(id=f"P{n}"),
        occurred_at=NOW,
    )


def message(n: int, payload: bytes | None = None) -> InboundMessage:
    return InboundMessage(
        connector="hl7v2",
        sender="HIS^MAIN",
        source_id=f"M{n}",
        payload=payload or f"MSH|{n}".encode(),
        translation=Translation(events=(booked(n),), message_id=f"M{n}"),
    )


async def store(db: Database, messages: list[InboundMessage]) -> list[IngestOutcome]:
    async with AsyncExitStack() as stack:
        writer = InboxWriter(db, FixedClock(NOW))
        await writer.start(stack)
        return list(await asyncio.gather(*(writer.ingest(m) for m in messages)))


async def kv_names(db: Database) -> list[str]:
    async with db.read() as conn:
        names = (await conn.execute(select(kv.c.name))).scalars()
        return sorted(n for n in names if n.startswith("test:"))


async def event_states(db: Database) -> list[str]:
    async with db.read() as conn:
        return list((await conn.execute(select(event.c.state).order_by(event.c.seq))).scalars())


class TestUnitOfWork:
    async def test_a_failing_handler_undoes_its_own_writes_and_keeps_the_others(self, sqlite_db):
        state = KvState(sqlite_db, FixedClock(NOW), "test")

        async def handler(evt):
            await state.set(evt.source.message_id, "planned")
            if evt.source.message_id == "M1":
                raise RuntimeError("poison")

        await store(sqlite_db, [message(n) for n in range(3)])
        processor = EventProcessor(
            sqlite_db, FixedClock(NOW), {"appointment.booked": handler}, Metrics(), get_logger()
        )
        assert await processor.tick() == 3
        assert await kv_names(sqlite_db) == ["test:M0", "test:M2"]
        assert await event_states(sqlite_db) == ["done", "failed", "done"]

    async def test_reads_inside_a_unit_see_its_writes_and_others_only_after_commit(self, sqlite_db):
        state = KvState(sqlite_db, FixedClock(NOW), "test")
        async with sqlite_db.unit_of_work():
            await state.set("k", "v")
            inside = await state.get("k")
            # a task started in a fresh context, as the relay's and the API's are
            outside = await asyncio.create_task(
                _read_elsewhere(sqlite_db), context=contextvars.Context()
            )
        assert inside == "v"
        assert outside == []  # another task is not in the unit: nothing committed yet
        assert await state.get("k") == "v"

    async def test_an_error_in_the_unit_rolls_everything_back(self, sqlite_db):
        state = KvState(sqlite_db, FixedClock(NOW), "test")
        with pytest.raises(RuntimeError):
            async with sqlite_db.unit_of_work():
                await state.set("k", "v")
                raise RuntimeError("boom")
        assert await kv_names(sqlite_db) == []

    async def test_the_inbox_commits_before_a_long_batch_of_events_is_done(self, sqlite_db):
        order: list[str] = []
        async with AsyncExitStack() as stack:
            writer = InboxWriter(sqlite_db, FixedClock(NOW))
            await writer.start(stack)
            for n in range(20):
                await writer.ingest(message(n))

            async def ack_path() -> None:
                await writer.ingest(message(99))
                order.append("acked")

            async def handler(evt):
                if evt.source.message_id == "M0":
                    acked.append(asyncio.create_task(ack_path()))
                order.append(evt.source.message_id)

            acked: list[asyncio.Task[None]] = []
            processor = EventProcessor(
                sqlite_db, FixedClock(NOW), {"appointment.booked": handler}, Metrics(), get_logger()
            )
            assert await processor.tick() == 20
            await asyncio.wait_for(acked[0], 5)
        # Then: the ACK did not wait for the other nineteen events
        assert order.index("acked") < order.index("M19")
        assert await event_states(sqlite_db) == ["done"] * 20 + ["pending"]

    async def test_a_handler_outside_the_shared_types_holds_no_writer_while_it_waits(
        self, sqlite_db
    ):
        async with AsyncExitStack() as stack:
            writer = InboxWriter(sqlite_db, FixedClock(NOW))
            await writer.start(stack)
            await writer.ingest(message(0))

            async def handler(evt):  # waits on something that needs the writer (as HTTP would)
                assert await writer.ingest(message(1)) is IngestOutcome.ACCEPTED

            processor = EventProcessor(
                sqlite_db,
                FixedClock(NOW),
                {"appointment.booked": handler},
                Metrics(),
                get_logger(),
                shared_types=frozenset(),
            )
            assert await asyncio.wait_for(processor.tick(), 5) == 1
        assert await event_states(sqlite_db) == ["done", "pending"]

    async def test_postgresql_units_share_nothing_and_still_isolate_failures(self, db):
        async def handler(evt):
            if evt.source.message_id == "M0":
                raise RuntimeError("poison")

        await store(db, [message(n) for n in range(2)])
        processor = EventProcessor(
            db, FixedClock(NOW), {"appointment.booked": handler}, Metrics(), get_logger()
        )
        assert await processor.tick() == 2
        assert await event_states(db) == ["failed", "done"]


class TestInlineReads:
    async def test_consent_lookup_sees_the_latest_entry(self, db):
        ledger = ConsentLedger(db, FixedClock(NOW))
        assert await ledger.opted_out("+573001230001") is False
        await ledger.record("+573001230001", "opt_out", source="test", evidence=None)
        assert await ledger.opted_out("+573001230001") is True
        assert await ledger.opted_out("+573001230002") is False

    async def test_a_lookup_that_waits_inside_its_block_does_not_block_another(self, sqlite_db):
        state = KvState(sqlite_db, FixedClock(NOW), "test")
        await state.set("k", "v")

        async def slow() -> str | None:
            async with sqlite_db.lookup() as conn:
                await asyncio.sleep(0.01)  # real I/O inside the block
                value: str | None = (await conn.execute(select(kv.c.value))).scalar_one_or_none()
                return value

        results = await asyncio.wait_for(asyncio.gather(slow(), state.get("k")), 5)
        assert list(results) == ["v", "v"]


class TestUrgentCommit:
    async def test_another_process_holding_the_write_lock_never_stalls_the_loop(
        self, tmp_path: Path
    ) -> None:
        db = await _migrated(tmp_path / "busy.db")
        other = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # as `bridge outbox retry` would, from another process
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        beat = asyncio.create_task(ticker())
        ingest = asyncio.create_task(store(db, [message(1)]))
        try:
            await asyncio.sleep(0.5)
            assert not ingest.done()  # the batch waits for the lock...
            assert ticks >= 20  # ...in a worker thread, not on the event loop
            other.execute("COMMIT")
            assert await asyncio.wait_for(ingest, 10) == [IngestOutcome.ACCEPTED]
        finally:
            beat.cancel()
            other.close()
            await db.dispose()


class TestRawInbox:
    async def test_the_raw_sqlite_statements_store_what_sqlalchemy_stores(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        batch = [message(n) for n in range(5)] + [
            message(1),  # duplicate
            message(2, b"MSH|other"),  # conflict
            InboundMessage(
                connector="hl7v2",
                sender="HIS^MAIN",
                source_id="Q1",
                payload=b"x",
                translation=Translation(
                    problems=(Problem(code="message.unreadable", message="bad", fatal=True),)
                ),
            ),
        ]
        raw_db = await _migrated(tmp_path / "raw.db")
        plain_db = await _migrated(tmp_path / "plain.db")
        ids = iter(range(10_000))
        monkeypatch.setattr(uuid, "uuid4", lambda: _Hex(next(ids)))  # the same row ids twice
        raw = await store(raw_db, batch)
        monkeypatch.setattr(inbox_module.InboxWriter, "raw_sqlite", False)
        ids = iter(range(10_000))
        plain = await store(plain_db, batch)
        for db in (raw_db, plain_db):
            await db.dispose()
        assert raw == plain
        assert set(raw) == set(IngestOutcome)
        assert _dump(tmp_path / "raw.db") == _dump(tmp_path / "plain.db")


class _Hex:
    def __init__(self, n: int) -> None:
        self.hex = f"{n:032x}"


async def _migrated(path: Path) -> Database:
    db = Database(f"sqlite:///{path}")
    await upgrade(db)
    return db


def _dump(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT * FROM inbox ORDER BY id").fetchall()
        rows += conn.execute(
            "SELECT seq, event_id, inbox_id, type, subject_key, payload, occurred_at, state "
            "FROM event ORDER BY seq"
        ).fetchall()
    return rows


async def _read_elsewhere(db: Database) -> list[str]:
    async with db.read() as conn:
        return list((await conn.execute(select(kv.c.name))).scalars())
