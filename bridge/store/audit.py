"""The audit log: append-only, each row carrying the hash of the one before it.

Every inbound and outbound message, EHR write and operator command leaves a row with ids and
decisions, never message text. ``hash = sha256(prev_hash | at | actor | action | subject |
detail-json)``; changing or deleting any row breaks every hash after it, which
``bridge audit verify`` reports with the first row that does not match.

Appends are serialised (the SQLite write lock; a PostgreSQL advisory transaction lock) so two
writers cannot both chain onto the same predecessor.
"""

from __future__ import annotations

__all__ = ["GENESIS", "AuditEntry", "AuditLog", "AuditVerdict", "chain_hash"]

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from bridge.ports import Clock
from bridge.store.database import Database
from bridge.store.tables import audit

#: One audit row to append: actor, action, subject, detail (ids and decisions, never text).
AuditEntry = tuple[str, str, "str | None", "Mapping[str, Any] | None"]
#: The predecessor hash of the first row.
GENESIS = "0" * 64
#: Key of the PostgreSQL advisory lock that serialises appends.
_ADVISORY_KEY = 0x4A55_D17


def chain_hash(
    prev_hash: str,
    at: datetime,
    actor: str,
    action: str,
    subject: str | None,
    detail: Mapping[str, Any] | None,
) -> str:
    """The hash of one audit row given its predecessor's."""
    body = orjson.dumps(detail or {}, option=orjson.OPT_SORT_KEYS).decode()
    material = "|".join((prev_hash, at.isoformat(), actor, action, subject or "", body))
    return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditVerdict:
    """The result of verifying the chain: ``ok``, rows checked, the first broken row id."""

    ok: bool
    rows: int
    broken_at: int | None = None


class AuditLog:
    """Append and verify the hash-chained audit log."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock

    async def append(
        self, actor: str, action: str, subject: str | None = None,
        detail: Mapping[str, Any] | None = None, *, conn: AsyncConnection | None = None,
    ) -> str:
        """Append one row; inside ``conn``'s transaction when given. Returns its hash."""
        entries = [(actor, action, subject, detail)]
        if conn is not None:
            return await self._append(conn, entries)
        async with self._db.write() as own:
            return await self._append(own, entries)

    async def append_many(self, entries: list[AuditEntry]) -> None:
        """Append several rows (actor, action, subject, detail) in one transaction, in order."""
        if entries:
            async with self._db.write() as conn:
                await self._append(conn, entries)

    async def _append(self, conn: AsyncConnection, entries: list[AuditEntry]) -> str:
        if not self._db.is_sqlite:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})
        prev = (await conn.execute(
            select(audit.c.hash).order_by(audit.c.id.desc()).limit(1)
        )).scalar_one_or_none() or GENESIS
        at = self._clock.now()
        rows = []
        for actor, action, subject, detail in entries:
            digest = chain_hash(prev, at, actor, action, subject, detail)
            rows.append({"at": at, "actor": actor, "action": action, "subject": subject,
                         "detail": dict(detail) if detail else None, "prev_hash": prev,
                         "hash": digest})
            prev = digest
        await conn.execute(insert(audit), rows)
        return prev

    async def verify(self) -> AuditVerdict:
        """Walk the chain from the first row; report the first row whose hash does not match."""
        prev = GENESIS
        count = 0
        async with self._db.read() as conn:
            result = await conn.stream(select(audit).order_by(audit.c.id))
            async for row in result:
                count += 1
                expected = chain_hash(prev, row.at, row.actor, row.action, row.subject, row.detail)
                if row.prev_hash != prev or row.hash != expected:
                    return AuditVerdict(ok=False, rows=count, broken_at=row.id)
                prev = row.hash
        return AuditVerdict(ok=True, rows=count)
