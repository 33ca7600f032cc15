"""Delivery statuses and inbound contact: matching webhooks to what the relay sent.

A status webhook names our message by ``biz_opaque_callback_data`` (the outbox id we sent with
it) and by its wamid. The callback wins: it matches even when the ``sent`` status overtakes the
HTTP response that told us the wamid (reference whatsapp.md §7), or arrives after a crash. A
status that matches nothing is held and looked at again for a while, then kept for operators:
messages sent by other apps on the same WhatsApp account are normal.

Statuses only move forward (``bridge.domain.delivery.advance``), so duplicates and reordering
end in the same state.
"""

from __future__ import annotations

__all__ = ["DeliveryTracker"]

from sqlalchemy import case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bridge.domain import Event, ReplyReceived, StatusUpdated
from bridge.domain.delivery import DELIVERY_STATUSES, advance
from bridge.engine.processor import HOLD
from bridge.ports import Clock
from bridge.store.database import Database
from bridge.store.sealing import PLAIN, DataCipher
from bridge.store.tables import conversation, outbox


class DeliveryTracker:
    """Event handlers for ``status.updated`` and the 24-hour window of ``reply.received``."""

    def __init__(
        self, db: Database, clock: Clock, channel: str = "whatsapp", cipher: DataCipher = PLAIN
    ) -> None:
        self._db = db
        self._clock = clock
        self._channel = channel
        self._cipher = cipher

    async def on_status(self, evt: Event) -> str | None:
        """Fold one status into its outbox row; HOLD when no row matches yet."""
        assert isinstance(evt, StatusUpdated)  # noqa: S101 - routed by type
        if evt.status not in DELIVERY_STATUSES:
            return None
        callback_id = int(evt.callback) if evt.callback and evt.callback.isdigit() else None
        where = (
            (outbox.c.id == callback_id)
            if callback_id is not None
            else (outbox.c.external_id == evt.message_id)
        )
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(outbox.c.id, outbox.c.delivery_status, outbox.c.external_id)
                    .where(where)
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                return HOLD
            new = advance(row.delivery_status, evt.status)
            values: dict[str, object] = {"delivery_status": new, "updated_at": self._clock.now()}
            if row.external_id is None:
                values["external_id"] = evt.message_id
            if evt.status == "failed" and evt.error_code is not None:
                values["last_error_code"] = str(evt.error_code)
            if new != row.delivery_status or "external_id" in values:
                await conn.execute(update(outbox).where(outbox.c.id == row.id).values(**values))
        return None

    async def on_reply(self, evt: Event) -> str | None:
        """Record the patient's last inbound message: it opens the 24-hour window."""
        assert isinstance(evt, ReplyReceived)  # noqa: S101 - routed by type
        now = self._clock.now()
        insert = sqlite.insert if self._db.is_sqlite else postgresql.insert
        stmt = insert(conversation).values(
            channel=self._channel,
            address=self._cipher.lookup(evt.channel_user),
            address_sealed=self._cipher.seal_text(evt.channel_user),
            last_inbound_at=evt.occurred_at,
            mode="bot",
            unknown_replies=0,
            updated_at=now,
        )
        # a replayed older reply must not move the window backwards
        later = case(
            (
                or_(
                    conversation.c.last_inbound_at.is_(None),
                    conversation.c.last_inbound_at < stmt.excluded.last_inbound_at,
                ),
                stmt.excluded.last_inbound_at,
            ),
            else_=conversation.c.last_inbound_at,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["channel", "address"],
            set_={"last_inbound_at": later, "updated_at": now},
        )
        async with self._db.write() as conn:
            await conn.execute(stmt)
        return None
