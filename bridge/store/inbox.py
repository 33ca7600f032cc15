"""The inbox: raw inbound messages and their events, committed before anyone is acknowledged.

:class:`InboxWriter` is the :class:`bridge.ports.EventSink` the connectors and the webhook
endpoints call. It does group commit: every ``ingest`` call waits on a future while one writer
task stores everything that arrived together in one transaction, then resolves all the futures.
Sixteen MLLP connections therefore share one fsync instead of paying sixteen (DESIGN.md §5: the
prototype reached 5,900 msg/s this way on SQLite).

Dedupe (DESIGN.md §3): the identity is ``connector|sender|source_id``. The same identity and the
same payload hash is a duplicate (nothing new is stored, the sender gets its ACK again); the same
identity with another payload is a conflict (stored, processed and reported, because real senders
reuse control ids). The unique ``(dedupe_key, payload_hash)`` constraint settles races between
two daemons: the loser's insert does nothing and its events, which are inserted only where their
inbox row exists, vanish with it.
"""

from __future__ import annotations

__all__ = ["InboxWriter", "dedupe_key", "subject_key"]

import asyncio
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Connection,
    Dialect,
    String,
    Table,
    bindparam,
    exists,
    insert,
    literal,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from bridge.domain import (
    AppointmentEvent,
    Event,
    InboundMessage,
    IngestOutcome,
    LabResultAvailable,
    PatientUpdated,
    ReplyReceived,
    StatusUpdated,
)
from bridge.errors import StoreUnavailable
from bridge.ports import Clock
from bridge.store.database import Database
from bridge.store.sealing import PLAIN, DataCipher
from bridge.store.tables import UtcDateTime, event, inbox

#: Upper bound of messages stored in one transaction; bigger bursts simply take two.
MAX_BATCH = 512


def dedupe_key(message: InboundMessage) -> str:
    """``connector|sender|source_id``, trimmed: the identity half of the dedupe key.

    Sender and source id are cut to 200 characters each, as their own columns are, so the key
    always fits its 450-character column and the duplicate lookup compares exactly what was
    stored (a longer key cut only on insert would never be found again).
    """
    sender, source_id = message.sender.strip()[:200], message.source_id.strip()[:200]
    return f"{message.connector[:32]}|{sender}|{source_id}"


def subject_key(evt: Event) -> str | None:
    """What an event is about, so later events can find earlier ones (re-planning)."""
    if isinstance(evt, AppointmentEvent):
        return f"appointment:{evt.appointment.system}|{evt.appointment.id}"
    if isinstance(evt, LabResultAvailable):
        return f"result:{evt.result.system}|{evt.result.id}"
    if isinstance(evt, PatientUpdated):
        return f"patient:{evt.patient.id}"
    if isinstance(evt, ReplyReceived):
        return f"address:{evt.channel_user}"
    if isinstance(evt, StatusUpdated):
        return f"message:{evt.message_id}"
    return None


@dataclass(slots=True)
class _Pending:
    message: InboundMessage
    future: asyncio.Future[IngestOutcome]


class InboxWriter:
    """Group-committing :class:`bridge.ports.EventSink` over the ``inbox`` and ``event`` tables.

    Args:
        db: the database.
        clock: gives ``received_at``.
        cipher: seals raw payloads and event payloads, and hashes ``address:`` subjects, when a
            data key is configured (microseconds per message, no extra round trip).
    """

    #: SQLite batches go straight to ``sqlite3`` (:class:`_RawSqlite`); False takes the
    #: SQLAlchemy statements instead (a test compares what the two store).
    raw_sqlite: ClassVar[bool] = True

    def __init__(self, db: Database, clock: Clock, cipher: DataCipher = PLAIN) -> None:
        self._db = db
        self._clock = clock
        self._cipher = cipher
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.stored = 0

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """Start the writer task; it drains and stops when the exit stack unwinds."""
        self._task = asyncio.create_task(self._run(), name="inbox-writer")
        exit_stack.push_async_callback(self.close)

    async def close(self) -> None:
        """Store what is queued, then stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def ingest(self, message: InboundMessage) -> IngestOutcome:
        """Queue ``message`` for the next group commit and wait until it is durable.

        Raises:
            StoreUnavailable: the batch could not be committed; do not acknowledge.
        """
        if self._task is None or self._closing:
            raise StoreUnavailable(self._db.redacted_url, "inbox writer not running")
        future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(message, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            messages = [p.message for p in batch]
            now = self._clock.now()
            if self._db.is_sqlite and self.raw_sqlite:
                dialect = self._db.sqlite_dialect
                outcomes = await self._db.sqlite_urgent_batch(
                    lambda raw: self._store(_RawSqlite(raw, dialect), messages, now)
                )
            else:
                outcomes = await self._db.write_batch(
                    lambda conn: self._store(_Statements(conn), messages, now), urgent=True
                )
        except StoreUnavailable as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        except Exception as exc:  # noqa: BLE001 - every waiter must hear about any failure
            failure = StoreUnavailable(self._db.redacted_url, type(exc).__name__)
            failure.__cause__ = exc
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            return
        self.batches += 1
        self.stored += len(batch)
        for pending, outcome in zip(batch, outcomes, strict=True):
            if not pending.future.done():
                pending.future.set_result(outcome)

    def _store(
        self, sql: _RawSqlite | _Statements, messages: Sequence[InboundMessage], now: datetime
    ) -> list[IngestOutcome]:
        """One batch, inside the transaction the database opened for it."""
        keys = [dedupe_key(m) for m in messages]
        hashes = [m.payload_hash for m in messages]
        known: dict[str, set[str]] = {}
        unique_keys = sorted(set(keys))
        for start in range(0, len(unique_keys), 400):  # stay under bind-parameter limits
            for key, digest in sql.known(unique_keys[start : start + 400]):
                known.setdefault(key, set()).add(digest)

        outcomes: list[IngestOutcome] = []
        inbox_rows: list[dict[str, Any]] = []
        event_rows: list[dict[str, Any]] = []
        for message, key, digest in zip(messages, keys, hashes, strict=True):
            seen = known.setdefault(key, set())
            if digest in seen:
                outcomes.append(IngestOutcome.DUPLICATE)
                continue
            translation = message.translation
            if translation.fatal:
                outcome, state = IngestOutcome.QUARANTINED, "quarantined"
            elif seen:
                outcome, state = IngestOutcome.CONFLICT, "conflict"
            else:
                outcome, state = IngestOutcome.ACCEPTED, "stored"
            seen.add(digest)
            row_id = uuid.uuid4().hex
            problems = [p.marshal() for p in translation.problems]
            reason = "; ".join(p.message for p in translation.problems if p.fatal) or None
            inbox_rows.append(
                {
                    "id": row_id,
                    "connector": message.connector,
                    "sender": message.sender[:200],
                    "source_id": message.source_id[:200],
                    "dedupe_key": key,
                    "payload_hash": digest,
                    "payload": self._cipher.seal(message.payload),
                    "content_type": message.content_type,
                    "received_at": now,
                    "state": state,
                    "reason": reason,
                    "problems": problems or None,
                }
            )
            if outcome is not IngestOutcome.QUARANTINED:
                for evt in translation.events:
                    event_rows.append(
                        {
                            "event_id": evt.event_id,
                            "inbox_id": row_id,
                            "type": evt.type,
                            "subject_key": self._cipher.subject(subject_key(evt)),
                            "payload": self._cipher.seal_json(evt.marshal()),
                            "occurred_at": evt.occurred_at,
                        }
                    )
            outcomes.append(outcome)

        sql.insert(inbox_rows, event_rows)
        return outcomes


class _Statements:
    """The inbox's statements through SQLAlchemy (PostgreSQL; SQLite when raw is turned off)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def known(self, keys: list[str]) -> Any:
        """``(dedupe_key, payload_hash)`` of stored rows with one of ``keys``."""
        return self._conn.execute(
            select(inbox.c.dedupe_key, inbox.c.payload_hash).where(inbox.c.dedupe_key.in_(keys))
        )

    def insert(self, inbox_rows: list[dict[str, Any]], event_rows: list[dict[str, Any]]) -> None:
        """Insert the batch's inbox rows, then its events."""
        if inbox_rows:
            insert_of = sqlite.insert if self._conn.dialect.name == "sqlite" else postgresql.insert
            statement = insert_of(inbox).on_conflict_do_nothing(
                index_elements=["dedupe_key", "payload_hash"]
            )
            self._conn.execute(statement, inbox_rows)
        if event_rows:
            self._conn.execute(_INSERT_EVENTS, event_rows)


#: Events are inserted only where their inbox row exists, so an inbox row skipped by
#: ON CONFLICT (another daemon won the race) takes its events with it.
_INSERT_EVENTS = insert(event).from_select(
    ["event_id", "inbox_id", "type", "subject_key", "payload", "occurred_at", "state"],
    select(
        bindparam("event_id", type_=String),
        bindparam("inbox_id", type_=String),
        bindparam("type", type_=String),
        bindparam("subject_key", type_=String),
        bindparam("payload", type_=JSON),
        bindparam("occurred_at", type_=UtcDateTime()),
        literal("pending", type_=String),
    ).where(exists().where(inbox.c.id == bindparam("inbox_id", type_=String))),
)


class _RawSqlite:
    """The inbox's three statements straight on ``sqlite3`` (SQLite only).

    The group commit runs them for every batch, and at one message per batch (a HIS sending
    sequentially) SQLAlchemy's work per execution cost more than SQLite's. The SQL is the one
    SQLAlchemy emits for the same statements; values go through the columns' own bind
    processors, so what is stored is byte for byte what the SQLAlchemy path stores.
    """

    _INBOX_COLUMNS = (
        "id",
        "connector",
        "sender",
        "source_id",
        "dedupe_key",
        "payload_hash",
        "payload",
        "content_type",
        "received_at",
        "state",
        "reason",
        "problems",
    )
    _EVENT_COLUMNS = ("event_id", "inbox_id", "type", "subject_key", "payload", "occurred_at")
    _INSERT_INBOX = (
        f"INSERT INTO inbox ({', '.join(_INBOX_COLUMNS)}) "  # noqa: S608 - constant names
        f"VALUES ({', '.join('?' for _ in _INBOX_COLUMNS)}) "
        "ON CONFLICT (dedupe_key, payload_hash) DO NOTHING"
    )
    #: events only where their inbox row exists (see _INSERT_EVENTS)
    _INSERT_EVENTS = (
        f"INSERT INTO event ({', '.join(_EVENT_COLUMNS)}, state) "  # noqa: S608 - constant names
        f"SELECT {', '.join('?' for _ in _EVENT_COLUMNS)}, 'pending' "
        "WHERE EXISTS (SELECT 1 FROM inbox WHERE inbox.id = ?)"
    )

    #: per dialect: the columns whose values need a bind processor, with it (one dialect per
    #: engine, so this stays tiny)
    _processors: dict[int, tuple[Any, _Processors, _Processors]] = {}

    def __init__(self, driver: sqlite3.Connection, dialect: Dialect) -> None:
        self._driver = driver
        cached = self._processors.get(id(dialect))
        if cached is None or cached[0] is not dialect:
            # dialect_impl: the SQLite DATETIME processor, as SQLAlchemy's own execution uses
            cached = (
                dialect,
                _processors_of(inbox, self._INBOX_COLUMNS, dialect),
                _processors_of(event, self._EVENT_COLUMNS, dialect),
            )
            self._processors[id(dialect)] = cached
        _, self._inbox, self._event = cached

    def known(self, keys: list[str]) -> list[tuple[str, str]]:
        """``(dedupe_key, payload_hash)`` of stored rows with one of ``keys``."""
        marks = ", ".join("?" for _ in keys)
        sql = f"SELECT dedupe_key, payload_hash FROM inbox WHERE dedupe_key IN ({marks})"  # noqa: S608
        rows: list[tuple[str, str]] = self._driver.execute(sql, keys).fetchall()
        return rows

    def insert(self, inbox_rows: list[dict[str, Any]], event_rows: list[dict[str, Any]]) -> None:
        """Insert the batch's inbox rows, then its events."""
        if inbox_rows:
            self._driver.executemany(
                self._INSERT_INBOX,
                [self._values(r, self._INBOX_COLUMNS, self._inbox) for r in inbox_rows],
            )
        if event_rows:
            self._driver.executemany(
                self._INSERT_EVENTS,
                [
                    [*self._values(r, self._EVENT_COLUMNS, self._event), r["inbox_id"]]
                    for r in event_rows
                ],
            )

    @staticmethod
    def _values(row: dict[str, Any], names: tuple[str, ...], processors: _Processors) -> list[Any]:
        values = [row[n] for n in names]
        for at, process in processors:
            values[at] = process(values[at])
        return values


#: (position, bind processor) of the columns that have one
_Processors = tuple[tuple[int, Callable[[Any], Any]], ...]


def _processors_of(table: Table, names: tuple[str, ...], dialect: Dialect) -> _Processors:
    """The bind processors SQLAlchemy applies to ``names`` of ``table`` on ``dialect``."""
    found = []
    for at, name in enumerate(names):
        type_ = table.c[name].type
        process = type_.dialect_impl(dialect).bind_processor(dialect)
        if process is not None:
            found.append((at, process))
    return tuple(found)
