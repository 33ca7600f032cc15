"""Conversations: per WhatsApp address, the 24-hour window and whether a person has taken over.

With a data key the ``address`` column holds the address's lookup hash and ``address_sealed``
the address itself (``bridge.store.sealing``); callers pass and get plain addresses.
"""

from __future__ import annotations

__all__ = ["Conversation", "Conversations"]

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bridge.ports import Clock
from bridge.store.database import Database
from bridge.store.sealing import PLAIN, DataCipher
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
    """Read and change conversation state.

    Args:
        db: the database.
        clock: gives ``updated_at``.
        channel: the channel the addresses belong to.
        cipher: hashes and seals addresses when a data key is configured.
    """

    def __init__(
        self, db: Database, clock: Clock, channel: str = "whatsapp", cipher: DataCipher = PLAIN
    ) -> None:
        self._db = db
        self._clock = clock
        self._channel = channel
        self._cipher = cipher

    async def get(self, address: str) -> Conversation | None:
        """The conversation with ``address``, or None when the patient never wrote."""
        async with self._db.lookup() as conn:
            row = (
                await conn.execute(
                    _BY_ADDRESS,
                    {"channel": self._channel, "address": self._cipher.lookup(address)},
                )
            ).one_or_none()
        if row is None:
            return None
        return _conversation(row, address)

    async def _upsert(self, address: str, values: dict[str, object]) -> None:
        insert = sqlite.insert if self._db.is_sqlite else postgresql.insert
        now = self._clock.now()
        initial: dict[str, object] = {"mode": "bot", "unknown_replies": 0, **values}
        stmt = insert(conversation).values(
            channel=self._channel,
            address=self._cipher.lookup(address),
            address_sealed=self._cipher.seal_text(address),
            updated_at=now,
            **initial,
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
        address = self._cipher.lookup(address)
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
        address = self._cipher.lookup(address)
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
            _conversation(r, self._cipher.reveal(r.address, r.address_sealed) or "?") for r in rows
        ]


def _conversation(row: Row[Any], address: str) -> Conversation:
    return Conversation(
        address,
        row.mode,
        row.last_inbound_at,
        row.unknown_replies,
        row.handoff_reason,
        row.updated_at,
    )


#: Built once (the relay asks for rows outside templates).
_BY_ADDRESS = select(conversation).where(
    conversation.c.channel == bindparam("channel"), conversation.c.address == bindparam("address")
)
