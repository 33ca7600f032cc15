"""Read-only summaries for operators: ``bridge status`` and the metrics gauges.

Counts and timestamps only: nothing here returns content, so the output is safe to paste into a
ticket.
"""

from __future__ import annotations

__all__ = ["StatusSummary", "purge_raw_payloads", "status_summary"]

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update

from bridge.store.database import Database
from bridge.store.tables import event, inbox, outbox


@dataclass(frozen=True, slots=True)
class StatusSummary:
    """Counts by state and the last inbound and outbound times."""

    outbox_by_state: dict[str, int]
    inbox_by_state: dict[str, int]
    events_by_state: dict[str, int]
    last_inbound_at: datetime | None
    last_outbound_at: datetime | None

    @property
    def quarantined(self) -> int:
        """Inbound messages kept in quarantine."""
        return self.inbox_by_state.get("quarantined", 0)


async def status_summary(db: Database) -> StatusSummary:
    """Gather the summary in one read transaction."""
    async with db.read() as conn:
        out: dict[str, int] = dict((await conn.execute(
            select(outbox.c.state, func.count()).group_by(outbox.c.state))).all())
        inb: dict[str, int] = dict((await conn.execute(
            select(inbox.c.state, func.count()).group_by(inbox.c.state))).all())
        evs: dict[str, int] = dict((await conn.execute(
            select(event.c.state, func.count()).group_by(event.c.state))).all())
        last_in = (await conn.execute(select(func.max(inbox.c.received_at)))).scalar()
        last_out = (await conn.execute(select(func.max(outbox.c.sent_at)))).scalar()
    return StatusSummary(out, inb, evs, _aware(last_in), _aware(last_out))


def _aware(value: datetime | str | None) -> datetime | None:
    # Aggregates bypass the column type, so SQLite hands back naive text: re-attach UTC.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


async def purge_raw_payloads(db: Database, before: datetime) -> int:
    """Drop raw payloads received before ``before``; rows and their metadata stay."""
    async with db.write() as conn:
        result = await conn.execute(
            update(inbox).where(inbox.c.received_at < before, inbox.c.payload.is_not(None))
            .values(payload=None)
        )
    return result.rowcount
