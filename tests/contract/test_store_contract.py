"""The store's contract, run on SQLite and PostgreSQL alike (STYLE.md §8 contract tests)."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update

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
from bridge.ports import OutboxRow, ReleaseResult
from bridge.store import AuditLog, Database, InboxWriter, SqlOutbox
from bridge.store.tables import audit, event, inbox, outbox
from bridge.testing import FixedClock

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def booked(message_id: str, appointment_id: str = "A1") -> Translation:
    evt = AppointmentBooked(
        source=SourceRef(connector="hl7v2", message_id=message_id),
        appointment=AppointmentInfo(id=appointment_id, status="booked",
                                    start=NOW + timedelta(days=3)),
        patient=PatientInfo(id="P1"),
    )
    return Translation(events=(evt,), message_id=message_id)


def message(source_id: str, payload: bytes, translation: Translation | None = None) -> InboundMessage:
    return InboundMessage(connector="hl7v2", sender="HIS^MAIN", source_id=source_id,
                          payload=payload, translation=translation or booked(source_id))


async def count(db: Database, table) -> int:
    async with db.read() as conn:
        return len((await conn.execute(select(table))).all())


class TestInbox:
    async def test_new_message_is_stored_with_its_events_before_ingest_returns(self, db):
        async with AsyncExitStack() as stack:
            writer = InboxWriter(db, FixedClock(NOW))
            await writer.start(stack)
            outcome = await writer.ingest(message("M1", b"MSH|1"))
            # Then: durable the moment ingest returned, visible on another connection
            assert outcome is IngestOutcome.ACCEPTED
            assert await count(db, inbox) == 1
            assert await count(db, event) == 1

    async def test_duplicate_is_recognised_and_makes_no_new_events(self, db):
        async with AsyncExitStack() as stack:
            writer = InboxWriter(db, FixedClock(NOW))
            await writer.start(stack)
            await writer.ingest(message("M1", b"MSH|1"))
            outcome = await writer.ingest(message(" M1 ", b"MSH|1"))
        assert outcome is IngestOutcome.DUPLICATE
        assert await count(db, inbox) == 1
        assert await count(db, event) == 1

    async def test_a_duplicate_with_an_overlong_control_id_is_still_recognised(self, db):
        long_id = "M" * 600  # longer than the stored key: the lookup must use the stored form
        async with AsyncExitStack() as stack:
            writer = InboxWriter(db, FixedClock(NOW))
            await writer.start(stack)
            first = await writer.ingest(message(long_id, b"MSH|1"))
            again = await writer.ingest(message(long_id, b"MSH|1"))
        assert (first, again) == (IngestOutcome.ACCEPTED, IngestOutcome.DUPLICATE)
        assert await count(db, inbox) == 1

    async def test_same_id_with_other_payload_is_a_conflict_kept_and_processed(self, db):
        async with AsyncExitStack() as stack:
            writer = InboxWriter(db, FixedClock(NOW))
            await writer.start(stack)
            await writer.ingest(message("M1", b"MSH|1"))
            outcome = await writer.ingest(message("M1", b"MSH|2", booked("M1", "A2")))
        assert outcome is IngestOutcome.CONFLICT
        async with db.read() as conn:
            states = sorted((await conn.execute(select(inbox.c.state))).scalars())
        assert states == ["conflict", "stored"]
        assert await count(db, event) == 2

    async def test_unreadable_message_is_quarantined_with_its_reason_and_no_events(self, db):
        bad = Translation(problems=(Problem(code="hl7.unparseable", message="no MSH segment",
                                            fatal=True),))
        async with AsyncExitStack() as stack:
            writer = InboxWriter(db, FixedClock(NOW))
            await writer.start(stack)
            outcome = await writer.ingest(message("?", b"garbage", bad))
        assert outcome is IngestOutcome.QUARANTINED
        async with db.read() as conn:
            row = (await conn.execute(select(inbox))).one()
        assert (row.state, row.reason, row.payload) == ("quarantined", "no MSH segment", b"garbage")
        assert await count(db, event) == 0

    async def test_concurrent_ingests_share_commits_and_all_are_stored(self, db):
        async with AsyncExitStack() as stack:
            writer = InboxWriter(db, FixedClock(NOW))
            await writer.start(stack)
            outcomes = await asyncio.gather(
                *(writer.ingest(message(f"M{i}", f"MSH|{i}".encode())) for i in range(300))
            )
        assert set(outcomes) == {IngestOutcome.ACCEPTED}
        assert await count(db, inbox) == 300
        assert writer.batches < 300  # group commit: fewer transactions than messages

    async def test_duplicates_inside_one_batch_are_stored_once(self, db):
        async with AsyncExitStack() as stack:
            writer = InboxWriter(db, FixedClock(NOW))
            await writer.start(stack)
            outcomes = await asyncio.gather(
                writer.ingest(message("M1", b"same")), writer.ingest(message("M1", b"same"))
            )
        assert sorted(o.value for o in outcomes) == ["accepted", "duplicate"]
        assert await count(db, event) == 1


def row(key: str, due: datetime = NOW, subject: str | None = None) -> OutboxRow:
    return OutboxRow(kind="reminder", idempotency_key=key, due_at=due,
                     payload={"to": "+573001230000", "kind": "text", "content": {"body": "x"}},
                     subject_key=subject)


class TestOutbox:
    async def test_enqueue_is_idempotent_by_key(self, db):
        box = SqlOutbox(db, FixedClock(NOW))
        first = await box.enqueue([row("k1"), row("k2")])
        again = await box.enqueue([row("k1")])
        assert again == first[:1]
        assert await count(db, outbox) == 2

    async def test_only_due_rows_are_acquired_and_each_once(self, db):
        box = SqlOutbox(db, FixedClock(NOW))
        await box.enqueue([row("due"), row("later", NOW + timedelta(hours=1))])
        first = await box.acquire("r1", timedelta(seconds=30), 10, NOW)
        second = await box.acquire("r2", timedelta(seconds=30), 10, NOW)
        assert [r.attempts for r in first] == [1]
        assert second == []

    async def test_expired_lease_lets_another_relay_take_the_row(self, db):
        box = SqlOutbox(db, FixedClock(NOW))
        await box.enqueue([row("k")])
        await box.acquire("dead-relay", timedelta(seconds=30), 10, NOW)
        taken = await box.acquire("r2", timedelta(seconds=30), 10, NOW + timedelta(seconds=31))
        assert [r.attempts for r in taken] == [2]
        # the dead relay's late release must not overwrite the new owner's work
        await box.release("dead-relay", [ReleaseResult(id=taken[0].id, external_id="wamid.X")])
        async with db.read() as conn:
            state, owner = (await conn.execute(select(outbox.c.state, outbox.c.lease_owner))).one()
        assert (state, owner) == ("leased", "r2")

    async def test_release_records_each_outcome(self, db):
        box = SqlOutbox(db, FixedClock(NOW))
        ids = await box.enqueue([row(k) for k in ("sent", "retry", "failed", "dead", "skip")])
        await box.acquire("r1", timedelta(seconds=30), 10, NOW)
        retry_at = NOW + timedelta(minutes=5)
        await box.release("r1", [
            ReleaseResult(id=ids[0], external_id="wamid.1"),
            ReleaseResult(id=ids[1], retry_at=retry_at, error_code="throttled"),
            ReleaseResult(id=ids[2], failed=True, error_code="recipient"),
            ReleaseResult(id=ids[3], dead=True, error_code="unavailable"),
            ReleaseResult(id=ids[4], cancelled=True),
        ])
        async with db.read() as conn:
            rows = {r.id: r for r in (await conn.execute(select(outbox))).all()}
        assert [rows[i].state for i in ids] == ["sent", "pending", "failed", "dead", "cancelled"]
        assert rows[ids[0]].external_id == "wamid.1"
        assert rows[ids[0]].delivery_status == "accepted"
        assert rows[ids[1]].next_attempt_at == retry_at
        assert rows[ids[3]].last_error_code == "unavailable"
        assert all(r.lease_owner is None for r in rows.values())

    async def test_extend_keeps_the_row_from_other_relays(self, db):
        box = SqlOutbox(db, FixedClock(NOW))
        ids = await box.enqueue([row("k")])
        await box.acquire("r1", timedelta(seconds=30), 10, NOW)
        await box.extend_leases("r1", ids, timedelta(seconds=30), NOW + timedelta(seconds=25))
        assert await box.acquire("r2", timedelta(seconds=30), 10, NOW + timedelta(seconds=40)) == []

    async def test_reap_returns_expired_rows_to_pending(self, db):
        box = SqlOutbox(db, FixedClock(NOW))
        await box.enqueue([row("k")])
        await box.acquire("r1", timedelta(seconds=30), 10, NOW)
        assert await box.reap_expired(NOW + timedelta(seconds=10)) == 0
        assert await box.reap_expired(NOW + timedelta(seconds=31)) == 1

    async def test_retry_requeues_dead_rows_and_rejects_unknown_ids(self, db):
        box = SqlOutbox(db, FixedClock(NOW))
        ids = await box.enqueue([row("k")])
        await box.acquire("r1", timedelta(seconds=30), 10, NOW)
        await box.release("r1", [ReleaseResult(id=ids[0], dead=True, error_code="x")])
        assert await box.retry(ids) == 1
        assert [r.state for r in await box.list()] == ["pending"]
        with pytest.raises(LookupError):
            await box.retry([ids[0] + 999])

    async def test_cancel_subject_drops_pending_rows_only(self, db):
        box = SqlOutbox(db, FixedClock(NOW))
        ids = await box.enqueue([row("a", subject="appt:1"), row("b", subject="appt:1"),
                                 row("c", subject="appt:2")])
        await box.acquire("r1", timedelta(seconds=30), 1, NOW)  # takes ids[0]
        assert await box.cancel_subject("appt:1") == 1
        states = {v.id: v.state for v in await box.list()}
        assert states == {ids[0]: "leased", ids[1]: "cancelled", ids[2]: "pending"}

    async def test_two_relays_racing_for_the_same_rows_never_share_one(self, db):
        box = SqlOutbox(db, FixedClock(NOW))
        await box.enqueue([row(f"k{i}") for i in range(50)])
        results = await asyncio.gather(
            *(SqlOutbox(db, FixedClock(NOW)).acquire(f"r{i}", timedelta(seconds=30), 7, NOW)
              for i in range(10))
        )
        taken = [r.id for batch in results for r in batch]
        assert len(taken) == len(set(taken)) == 50


class TestAudit:
    async def test_chain_verifies_and_detects_an_edited_row(self, db):
        log = AuditLog(db, FixedClock(NOW))
        for i in range(5):
            await log.append("operator:test", "outbox.retry", f"outbox:{i}", {"n": i})
        verdict = await log.verify()
        assert (verdict.ok, verdict.rows) == (True, 5)
        async with db.write() as conn:
            await conn.execute(update(audit).where(audit.c.id == 3).values(action="tampered"))
        verdict = await log.verify()
        assert (verdict.ok, verdict.broken_at) == (False, 3)

    async def test_a_deleted_row_breaks_the_chain(self, db):
        log = AuditLog(db, FixedClock(NOW))
        for i in range(3):
            await log.append("daemon", "send", f"outbox:{i}")
        async with db.write() as conn:
            await conn.execute(text("DELETE FROM audit WHERE id = 2"))
        assert (await log.verify()).broken_at == 3


class TestRevive:
    async def test_revive_plans_a_cancelled_key_again_but_never_a_sent_one(self, db):
        box = SqlOutbox(db, FixedClock(NOW))
        [cancelled, sent] = await box.enqueue([row("a", subject="s"), row("b")])
        await box.cancel_subject("s")
        await box.acquire("r", timedelta(seconds=30), 10, NOW)
        await box.release("r", [ReleaseResult(id=sent, external_id="wamid.1")])
        later = NOW + timedelta(hours=2)
        again = await box.enqueue([row("a", due=later, subject="s"), row("b", due=later)],
                                  revive=True)
        assert again == [cancelled, sent]
        states = {v.id: (v.state, v.due_at) for v in await box.list()}
        assert states[cancelled] == ("pending", later)
        assert states[sent][0] == "sent"
