"""Status webhooks matched to outbox rows, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import permutations

from sqlalchemy import select, update

from bridge.domain import SourceRef, StatusUpdated
from bridge.engine.delivery import DeliveryTracker
from bridge.engine.processor import HOLD
from bridge.ports import OutboxRow, ReleaseResult
from bridge.store import SqlOutbox
from bridge.store.tables import outbox
from bridge.testing import FixedClock

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
SRC = SourceRef(connector="whatsapp", message_id="post")


def status(wamid: str, value: str, callback: str | None, code: int | None = None) -> StatusUpdated:
    return StatusUpdated(source=SRC, message_id=wamid, status=value, callback=callback,
                         error_code=code)


async def sent_row(db, key="k", wamid: str | None = "wamid.A") -> int:
    box = SqlOutbox(db, FixedClock(NOW))
    [row_id] = await box.enqueue([OutboxRow(kind="reminder", idempotency_key=key, due_at=NOW,
                                            payload={"to": "+1", "kind": "text", "content": {}})])
    await box.acquire("r", timedelta(seconds=30), 10, NOW)
    if wamid is not None:
        await box.release("r", [ReleaseResult(id=row_id, external_id=wamid)])
    return row_id


async def delivery_state(db, row_id):
    async with db.read() as conn:
        return (await conn.execute(select(outbox.c.delivery_status, outbox.c.external_id,
                                          outbox.c.last_error_code)
                                   .where(outbox.c.id == row_id))).one()


class TestDeliveryTracking:
    async def test_statuses_in_any_order_with_duplicates_end_read(self, db):
        tracker = DeliveryTracker(db, FixedClock(NOW))
        for n, order in enumerate(permutations(["sent", "delivered", "read", "delivered"])):
            if n % 5:  # a spread of the 24 orders keeps the test quick
                continue
            row_id = await sent_row(db, key=f"k{n}", wamid=f"wamid.{n}")
            for value in order:
                await tracker.on_status(status(f"wamid.{n}", value, str(row_id)))
            assert (await delivery_state(db, row_id))[0] == "read"

    async def test_failed_is_final_and_keeps_the_graph_error_code(self, db):
        tracker = DeliveryTracker(db, FixedClock(NOW))
        row_id = await sent_row(db)
        await tracker.on_status(status("wamid.A", "failed", str(row_id), code=131026))
        await tracker.on_status(status("wamid.A", "sent", str(row_id)))
        assert tuple(await delivery_state(db, row_id)) == ("failed", "wamid.A", "131026")

    async def test_a_status_that_beats_the_send_response_is_matched_by_callback(self, db):
        tracker = DeliveryTracker(db, FixedClock(NOW))
        row_id = await sent_row(db, wamid=None)  # still leased: HTTP response not back yet
        assert await tracker.on_status(status("wamid.EARLY", "sent", str(row_id))) is None
        assert tuple(await delivery_state(db, row_id))[:2] == ("sent", "wamid.EARLY")

    async def test_a_status_without_callback_is_matched_by_wamid(self, db):
        tracker = DeliveryTracker(db, FixedClock(NOW))
        row_id = await sent_row(db)
        await tracker.on_status(status("wamid.A", "delivered", None))
        assert (await delivery_state(db, row_id))[0] == "delivered"

    async def test_an_unknown_message_is_held_for_later(self, db):
        tracker = DeliveryTracker(db, FixedClock(NOW))
        assert await tracker.on_status(status("wamid.OTHER-APP", "sent", None)) == HOLD

    async def test_reply_opens_the_window_and_an_older_replay_does_not_move_it_back(self, db):
        from bridge.domain import ReplyReceived
        from bridge.store.tables import conversation

        tracker = DeliveryTracker(db, FixedClock(NOW))
        late = ReplyReceived(source=SRC, message_id="wamid.in2", channel_user="+573001230001",
                             intent="confirm", occurred_at=NOW)
        early = ReplyReceived(source=SRC, message_id="wamid.in1", channel_user="+573001230001",
                              intent="unknown", occurred_at=NOW - timedelta(hours=3))
        await tracker.on_reply(late)
        await tracker.on_reply(early)
        async with db.read() as conn:
            last = (await conn.execute(select(conversation.c.last_inbound_at))).scalar_one()
        assert last == NOW
        async with db.write() as conn:
            await conn.execute(update(conversation).values(mode="bot"))
