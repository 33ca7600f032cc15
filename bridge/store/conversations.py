"""Conversations: per WhatsApp address, the 24-hour window and whether a person has taken over."""

from __future__ import annotations

__all__ = ["Conversation", "Conversations"]

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bridge.ports import Clock
from bridge.store.database import Database
from bridge.store.tables import conversation


@dataclass(frozen=True, slots=True)
class Conversation:
    """One conversation's state."""

    address: str
    mode: str
    last_inbound_at: datetime | None
    unknown_replies: int
    handoff_reason: str | None
    updated_at: datetime


class Conversations:
    """Read and change conversation state."""

    def __init__(self, db: Database, clock: Clock, channel: str = "whatsapp") -> None:
        self._db = db
        self._clock = clock
        self._channel = channel

    async def get(self, address: str) -> Conversation | None:
        """The conversation with ``address``, or None when the patient never wrote."""
        async with self._db.lookup() as conn:
            row = (
                await conn.execute(_BY_ADDRESS, {"channel": self._channel, "address": address})
            ).one_or_none()
        if row is None:
            return None
        return Conversation(
            row.address,
            row.mode,
            row.last_inbound_at,
            row.unknown_replies,
            row.handoff_reason,
            row.updated_at,
        )

    async def _upsert(self, address: str, values: dict[str, object]) -> None:
        insert = sqlite.insert if self._db.is_sqlite else postgresql.insert
        now = self._clock.now()
        initial: dict[str, object] = {"mode": "bot", "unknown_replies": 0, **values}
        stmt = insert(conversation).values(
            channel=self._channel, address=address, updated_at=now, **initial
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["channel", "address"], set_={**values, "updated_at": now}
        )
        async with self._db.write() as conn:
            await conn.execute(stmt)

    async def hand_off(self, address: str, reason: str) -> None:
        """A person takes over: the bot stays silent here until released."""
        await self._upsert(address, {"mode": "handoff", "handoff_reason": reason})

    async def release(self, address: str) -> None:
        """Give the conversation back to the bot."""
        await self._upsert(address, {"mode": "bot", "handoff_reason": None, "unknown_replies": 0})

    async def count_unknown(self, address: str) -> int:
        """One more reply the bot did not understand; returns the new count."""
        async with self._db.write() as conn:
            await conn.execute(
                update(conversation)
                .where(conversation.c.channel == self._channel, conversation.c.address == address)
                .values(
                    unknown_replies=conversation.c.unknown_replies + 1, updated_at=self._clock.now()
                )
            )
            count = (
                await conn.execute(
                    select(conversation.c.unknown_replies).where(
                        conversation.c.channel == self._channel, conversation.c.address == address
                    )
                )
            ).scalar_one_or_none()
        return int(count or 0)

    async def reset_unknown(self, address: str) -> None:
        """The patient said something we understood."""
        async with self._db.write() as conn:
            await conn.execute(
                update(conversation)
                .where(conversation.c.channel == self._channel, conversation.c.address == address)
                .values(unknown_replies=0)
            )

    async def in_handoff(self) -> list[Conversation]:
        """Conversations a person has taken over (``bridge handoff list``)."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(conversation)
                    .where(conversation.c.mode == "handoff")
                    .order_by(conversation.c.updated_at)
                )
            ).all()
        return [
            Conversation(
                r.address,
                r.mode,
                r.last_inbound_at,
                r.unknown_replies,
                r.handoff_reason,
                r.updated_at,
            )
            for r in rows
        ]


#: Built once (the relay asks for rows outside templates).
_BY_ADDRESS = select(conversation).where(
    conversation.c.channel == bindparam("channel"), conversation.c.address == bindparam("address")
)
