"""The SQL outbox: planned messages with leases, shared safely by several relays and daemons.

Modelled on APScheduler's data store (``acquire_jobs``/``release_job``/``reap_abandoned_jobs``):
a relay *acquires* due rows by writing its id and a lease expiry on them in one statement, sends,
then *releases* them with the outcome. On PostgreSQL the candidate rows are locked with
``FOR UPDATE SKIP LOCKED`` so two daemons never take the same row; on SQLite the write lock
does the same job. A relay that dies (kill -9) simply stops extending its leases: once they expire
the rows are due again and another relay takes them.

``attempts`` is counted when a row is acquired, not when it is released, so a message that
crashes the relay every time still reaches its dead-letter state.

With a data key, ``payload`` (which carries the patient's phone and name) is sealed whole and
``recipient_key`` holds the phone's lookup hash (``bridge.store.sealing``); rows are handed to
the relay unsealed.
"""

from __future__ import annotations

__all__ = ["OutboxView", "SqlOutbox"]

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bridge.errors import NotFound
from bridge.ports import AcquiredRow, Clock, OutboxRow, ReleaseResult
from bridge.store.database import Database
from bridge.store.sealing import PLAIN, DataCipher, SealedDataError
from bridge.store.tables import outbox


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxView:
    """One outbox row as operators see it (``bridge outbox list``): ids and states, no content."""

    id: int
    kind: str
    state: str
    attempts: int
    due_at: datetime
    next_attempt_at: datetime
    delivery_status: str | None
    last_error_code: str | None
    external_id: str | None
    subject_key: str | None


class SqlOutbox:
    """:class:`bridge.ports.Outbox` over the ``outbox`` table.

    Args:
        db: the database.
        clock: timestamps for ``created_at``/``updated_at``.
        cipher: seals payloads and hashes recipients when a data key is configured.
    """

    def __init__(self, db: Database, clock: Clock, cipher: DataCipher = PLAIN) -> None:
        self._db = db
        self._clock = clock
        self._cipher = cipher

    async def enqueue(self, rows: Sequence[OutboxRow], *, revive: bool = False) -> list[int]:
        """Insert rows; an existing idempotency key keeps its row. Returns ids in order.

        Args:
            rows: the rows to plan.
            revive: a key whose row was *cancelled* is planned again with the new due time
                (an appointment moved back to a time it had before). Sent, failed and pending
                rows are never touched, so nothing is sent twice.
        """
        if not rows:
            return []
        now = self._clock.now()
        cipher = self._cipher
        values = [
            {
                "kind": r.kind,
                "channel": r.channel,
                "idempotency_key": r.idempotency_key,
                "subject_key": cipher.subject(r.subject_key),
                "recipient_key": cipher.lookup_optional(r.recipient_key),
                "payload": cipher.seal_json(dict(r.payload)),
                "due_at": r.due_at,
                "next_attempt_at": r.due_at,
                "state": "pending",
                "attempts": 0,
                "created_at": now,
                "updated_at": now,
            }
            for r in rows
        ]
        keys = [r.idempotency_key for r in rows]
        async with self._db.write() as conn:
            await conn.execute(_enqueue_statement(self._db.is_sqlite, revive), values)
            result = await conn.execute(_IDS_BY_KEY, {"keys": keys})
            ids = {row.idempotency_key: row.id for row in result}
        return [ids[k] for k in keys]

    async def acquire(
        self, relay_id: str, lease: timedelta, limit: int, now: datetime
    ) -> list[AcquiredRow]:
        """Lease up to ``limit`` due rows (pending and due, or leased with an expired lease)."""
        due = or_(
            and_(outbox.c.state == "pending", outbox.c.next_attempt_at <= now),
            and_(outbox.c.state == "leased", outbox.c.lease_expires_at < now),
        )
        candidates = (
            select(outbox.c.id)
            .where(due)
            .order_by(outbox.c.next_attempt_at, outbox.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        expires = now + lease
        stmt = (
            update(outbox)
            .where(outbox.c.id.in_(candidates))
            .values(
                state="leased",
                lease_owner=relay_id,
                lease_expires_at=expires,
                attempts=outbox.c.attempts + 1,
                updated_at=now,
            )
            .returning(
                outbox.c.id,
                outbox.c.kind,
                outbox.c.channel,
                outbox.c.payload,
                outbox.c.attempts,
                outbox.c.due_at,
                outbox.c.subject_key,
                outbox.c.recipient_key,
            )
        )
        async with self._db.write() as conn:
            result = await conn.execute(stmt)
            rows = result.all()
        acquired = [
            AcquiredRow(
                id=r.id,
                kind=r.kind,
                channel=r.channel,
                payload=self._open(r.payload),
                attempts=r.attempts,
                due_at=r.due_at,
                lease_expires_at=expires,
                subject_key=r.subject_key,
                recipient_key=r.recipient_key,
            )
            for r in rows
        ]
        acquired.sort(key=lambda a: (a.due_at, a.id))
        return acquired

    def _open(self, payload: Any) -> Any:
        """The row's payload unsealed; an empty one when it cannot be opened (changed in the
        database), so the relay fails that row as unreadable instead of stalling on it."""
        try:
            return self._cipher.open_json(payload)
        except SealedDataError:
            return {}

    async def release(self, relay_id: str, results: Sequence[ReleaseResult]) -> None:
        """Record outcomes for rows this relay still holds; others are left alone."""
        if not results:
            return
        now = self._clock.now()
        params: list[dict[str, Any]] = []
        for r in results:
            if r.external_id is not None:
                state, next_at = "sent", None
            elif r.cancelled:
                state, next_at = "cancelled", None
            elif r.retry_at is not None and not (r.failed or r.dead):
                state, next_at = "pending", r.retry_at
            else:
                state, next_at = ("dead" if r.dead else "failed"), None
            params.append(
                {
                    "b_id": r.id,
                    "b_owner": relay_id,
                    "b_state": state,
                    "b_next": next_at,
                    "b_ext": r.external_id,
                    "b_code": r.error_code,
                    "b_err": r.error_detail,
                    "b_sent": now if state == "sent" else None,
                    "b_now": now,
                    "b_delivery": "accepted" if state == "sent" else None,
                    "b_refund": 1 if r.refund_attempt else 0,
                }
            )
        stmt = (
            update(outbox)
            .where(
                outbox.c.id == bindparam("b_id"),
                outbox.c.lease_owner == bindparam("b_owner"),
                outbox.c.state == "leased",
            )
            .values(
                state=bindparam("b_state"),
                next_attempt_at=func.coalesce(
                    bindparam("b_next", type_=outbox.c.due_at.type), outbox.c.next_attempt_at
                ),
                external_id=func.coalesce(
                    bindparam("b_ext", type_=outbox.c.external_id.type), outbox.c.external_id
                ),
                delivery_status=func.coalesce(
                    outbox.c.delivery_status,
                    bindparam("b_delivery", type_=outbox.c.delivery_status.type),
                ),
                attempts=outbox.c.attempts - bindparam("b_refund", type_=outbox.c.attempts.type),
                last_error_code=bindparam("b_code"),
                last_error=bindparam("b_err"),
                sent_at=bindparam("b_sent", type_=outbox.c.sent_at.type),
                lease_owner=None,
                lease_expires_at=None,
                updated_at=bindparam("b_now", type_=outbox.c.updated_at.type),
            )
        )
        async with self._db.write() as conn:
            await conn.execute(stmt, params)

    async def extend_leases(
        self, relay_id: str, ids: Sequence[int], lease: timedelta, now: datetime
    ) -> None:
        """Push the lease of rows this relay is still working on."""
        if not ids:
            return
        async with self._db.write() as conn:
            await conn.execute(
                update(outbox)
                .where(
                    outbox.c.id.in_(list(ids)),
                    outbox.c.lease_owner == relay_id,
                    outbox.c.state == "leased",
                )
                .values(lease_expires_at=now + lease, updated_at=now)
            )

    async def release_all(self, relay_id: str) -> int:
        """Hand back every row this relay holds (graceful shutdown): due again at once."""
        async with self._db.write() as conn:
            result = await conn.execute(
                update(outbox)
                .where(outbox.c.lease_owner == relay_id, outbox.c.state == "leased")
                .values(
                    state="pending",
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=outbox.c.attempts - 1,
                    updated_at=self._clock.now(),
                )
            )
        return result.rowcount

    async def reap_expired(self, now: datetime) -> int:
        """Return rows whose lease expired to ``pending``; returns how many."""
        async with self._db.write() as conn:
            result = await conn.execute(
                update(outbox)
                .where(outbox.c.state == "leased", outbox.c.lease_expires_at < now)
                .values(state="pending", lease_owner=None, lease_expires_at=None, updated_at=now)
            )
        return result.rowcount

    async def cancel_subject(self, subject_key: str, kinds: Sequence[str] | None = None) -> int:
        """Cancel pending rows about one subject (a re-plan); returns how many."""
        conditions = [outbox.c.subject_key == subject_key, outbox.c.state.in_(("pending", "held"))]
        if kinds is not None:
            conditions.append(outbox.c.kind.in_(list(kinds)))
        async with self._db.write() as conn:
            result = await conn.execute(
                update(outbox)
                .where(*conditions)
                .values(state="cancelled", updated_at=self._clock.now())
            )
        return result.rowcount

    async def retry(self, ids: Sequence[int]) -> int:
        """Requeue failed, dead or held rows now (``bridge outbox retry``).

        Raises:
            NotFound: one of ``ids`` does not exist.
        """
        now = self._clock.now()
        async with self._db.write() as conn:
            found = set(
                (await conn.execute(select(outbox.c.id).where(outbox.c.id.in_(list(ids)))))
                .scalars()
                .all()
            )
            missing = [i for i in ids if i not in found]
            if missing:
                raise NotFound("outbox row", str(missing[0]))
            result = await conn.execute(
                update(outbox)
                .where(
                    outbox.c.id.in_(list(ids)),
                    outbox.c.state.in_(("failed", "dead", "held", "cancelled")),
                )
                .values(
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    last_error=None,
                    updated_at=now,
                )
            )
        return result.rowcount

    async def list(
        self, *, states: Sequence[str] | None = None, limit: int = 50
    ) -> list[OutboxView]:
        """Rows for operators, newest first."""
        stmt = select(outbox).order_by(outbox.c.id.desc()).limit(limit)
        if states:
            stmt = stmt.where(outbox.c.state.in_(list(states)))
        async with self._db.read() as conn:
            rows = (await conn.execute(stmt)).all()
        return [
            OutboxView(
                id=r.id,
                kind=r.kind,
                state=r.state,
                attempts=r.attempts,
                due_at=r.due_at,
                next_attempt_at=r.next_attempt_at,
                delivery_status=r.delivery_status,
                last_error_code=r.last_error_code,
                external_id=r.external_id,
                subject_key=r.subject_key,
            )
            for r in rows
        ]


#: Built once: building an upsert (its ``excluded`` alias above all) cost more than running it.
_ENQUEUE: dict[tuple[bool, bool], Any] = {}
_IDS_BY_KEY = select(outbox.c.idempotency_key, outbox.c.id).where(
    outbox.c.idempotency_key.in_(bindparam("keys", expanding=True))
)


def _enqueue_statement(is_sqlite: bool, revive: bool) -> Any:
    """The insert of :meth:`SqlOutbox.enqueue` for the dialect, built on first use."""
    stmt = _ENQUEUE.get((is_sqlite, revive))
    if stmt is None:
        stmt = (sqlite.insert if is_sqlite else postgresql.insert)(outbox)
        if revive:
            stmt = stmt.on_conflict_do_update(
                index_elements=["idempotency_key"],
                set_={
                    "state": "pending",
                    "due_at": stmt.excluded.due_at,
                    "next_attempt_at": stmt.excluded.next_attempt_at,
                    "attempts": 0,
                    "payload": stmt.excluded.payload,
                    "updated_at": stmt.excluded.updated_at,
                },
                where=outbox.c.state == "cancelled",
            )
        else:
            stmt = stmt.on_conflict_do_nothing(index_elements=["idempotency_key"])
        _ENQUEUE[(is_sqlite, revive)] = stmt
    return stmt
