"""The relay against a real SQLite outbox and an in-memory channel with scripted errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from bridge.config import RelaySettings
from bridge.engine.relay import Relay
from bridge.errors import (
    ChannelConfigInvalid,
    ChannelThrottled,
    ChannelUnavailable,
    RecipientUnreachable,
    SkipNotification,
)
from bridge.logging import get_logger
from bridge.metrics import Metrics
from bridge.ports import OutboxRow
from bridge.store import SqlOutbox
from bridge.store.tables import outbox
from bridge.testing import FixedClock, MemoryChannel

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


@pytest.fixture(name="clock")
def _clock() -> FixedClock:
    return FixedClock(NOW)


def relay_for(db, clock, channel, **overrides) -> Relay:
    settings = RelaySettings(**{"max_attempts": 3, "backoff_base_seconds": 10,
                                "backoff_max_seconds": 60, **overrides})
    return Relay(outbox=SqlOutbox(db, clock), channels={"whatsapp": channel}, clock=clock,
                 settings=settings, metrics=Metrics(), log=get_logger())


async def enqueue(db, clock, n=1):
    rows = [OutboxRow(kind="reminder", idempotency_key=f"k{i}", due_at=NOW,
                      payload={"to": "+573001230000", "kind": "text", "content": {"body": "hi"}})
            for i in range(n)]
    return await SqlOutbox(db, clock).enqueue(rows)


async def row_state(db, row_id):
    async with db.read() as conn:
        return (await conn.execute(select(outbox).where(outbox.c.id == row_id))).one()


class TestRelay:
    async def test_relay_sends_due_rows_with_the_outbox_id_and_marks_them_sent(self, sqlite_db, clock):
        channel = MemoryChannel()
        ids = await enqueue(sqlite_db, clock, 3)
        assert await relay_for(sqlite_db, clock, channel).tick() == 3
        assert sorted(n.outbox_id for n in channel.sent) == sorted(ids)
        row = await row_state(sqlite_db, ids[0])
        assert (row.state, row.external_id is not None) == ("sent", True)

    async def test_relay_retries_a_throttled_send_no_sooner_than_retry_after(self, sqlite_db, clock):
        channel = MemoryChannel()
        channel.script.append(ChannelThrottled("throttled", "slow down", provider_code=130429,
                                               retry_after=120))
        [row_id] = await enqueue(sqlite_db, clock)
        relay = relay_for(sqlite_db, clock, channel)
        await relay.tick()
        row = await row_state(sqlite_db, row_id)
        assert row.state == "pending" and row.last_error_code == "throttled"
        assert row.next_attempt_at >= NOW + timedelta(seconds=120)
        assert await relay.tick() == 0  # not due yet
        clock.advance(timedelta(seconds=121))
        assert await relay.tick() == 1
        assert len(channel.sent) == 1

    async def test_relay_marks_row_failed_when_recipient_unreachable(self, sqlite_db, clock):
        channel = MemoryChannel()
        channel.script.append(RecipientUnreachable("recipient", "not on WhatsApp",
                                                   provider_code=131026))
        [row_id] = await enqueue(sqlite_db, clock)
        await relay_for(sqlite_db, clock, channel).tick()
        row = await row_state(sqlite_db, row_id)
        assert (row.state, row.last_error_code) == ("failed", "recipient")

    async def test_relay_dead_letters_after_max_attempts_keeping_the_last_error(self, sqlite_db, clock):
        channel = MemoryChannel()
        channel.script.extend(ChannelUnavailable("unavailable", "502") for _ in range(5))
        [row_id] = await enqueue(sqlite_db, clock)
        relay = relay_for(sqlite_db, clock, channel)
        for _ in range(3):
            await relay.tick()
            clock.advance(timedelta(minutes=5))
        row = await row_state(sqlite_db, row_id)
        assert (row.state, row.attempts, row.last_error_code) == ("dead", 3, "unavailable")
        assert channel.attempts == 3

    async def test_config_errors_fail_without_retry_and_count_for_alerting(self, sqlite_db, clock):
        channel = MemoryChannel()
        channel.script.append(ChannelConfigInvalid("config", "token expired", provider_code=190))
        [row_id] = await enqueue(sqlite_db, clock)
        relay = relay_for(sqlite_db, clock, channel)
        await relay.tick()
        assert (await row_state(sqlite_db, row_id)).state == "failed"
        assert relay.stats.failed == 1

    async def test_a_skipped_notification_is_cancelled_not_sent(self, sqlite_db, clock):
        async def consent_says_no(row):
            raise SkipNotification("opted_out")

        channel = MemoryChannel()
        [row_id] = await enqueue(sqlite_db, clock)
        relay = Relay(outbox=SqlOutbox(sqlite_db, clock), channels={"whatsapp": channel},
                      clock=clock, settings=RelaySettings(), metrics=Metrics(), log=get_logger(),
                      prepare=consent_says_no)
        await relay.tick()
        assert channel.sent == []
        row = await row_state(sqlite_db, row_id)
        assert (row.state, row.last_error) == ("cancelled", "opted_out")

    async def test_an_unexpected_crash_in_send_is_retried_not_lost(self, sqlite_db, clock):
        class Exploding(MemoryChannel):
            async def send(self, notification):
                raise RuntimeError("bug")

        [row_id] = await enqueue(sqlite_db, clock)
        await relay_for(sqlite_db, clock, Exploding()).tick()
        row = await row_state(sqlite_db, row_id)
        assert (row.state, row.last_error_code) == ("pending", "internal")


class TestHeld:
    async def test_a_send_held_by_a_local_limit_waits_without_using_an_attempt(self, sqlite_db,
                                                                             clock):
        from bridge.errors import SendHeld

        channel = MemoryChannel()
        channel.script.append(SendHeld("patient_spacing", NOW + timedelta(seconds=6), NOW))
        [row_id] = await enqueue(sqlite_db, clock)
        relay = relay_for(sqlite_db, clock, channel)
        await relay.tick()
        row = await row_state(sqlite_db, row_id)
        assert (row.state, row.attempts) == ("pending", 0)
        assert row.next_attempt_at == NOW + timedelta(seconds=6)
        clock.advance(timedelta(seconds=7))
        await relay.tick()
        assert (await row_state(sqlite_db, row_id)).state == "sent"

    async def test_a_row_for_an_unknown_channel_fails_with_that_reason(self, sqlite_db, clock):
        box = SqlOutbox(sqlite_db, clock)
        [row_id] = await box.enqueue([OutboxRow(kind="x", channel="pigeon", idempotency_key="p",
                                                due_at=NOW, payload={})])
        await relay_for(sqlite_db, clock, MemoryChannel()).tick()
        row = await row_state(sqlite_db, row_id)
        assert (row.state, row.last_error_code) == ("failed", "unknown_channel")
