"""The database handle: one async engine, a write path, and errors the daemon understands.

SQLite is the embedded default (WAL mode, one writer at a time, so writes in this process queue on
an asyncio lock instead of spinning on ``database is locked``); PostgreSQL is the production store
and the way to run several daemons. Connection failures become
:class:`bridge.errors.StoreUnavailable`, so callers never see driver exceptions.

On SQLite a write transaction runs its statements inline, on a plain ``sqlite3`` connection in
the event loop's thread: a statement on a local WAL file takes microseconds, while a round trip
to aiosqlite's thread cost more than the SQL (and fought the ingest thread for the GIL). Only the
steps that can wait (``BEGIN IMMEDIATE`` behind another process, ``COMMIT`` with its fsync or
checkpoint) go to a worker thread. :meth:`Database.unit_of_work` lets one caller (the event
processor) share one such transaction across many store calls. The inbox's group commit, which
every acknowledgement waits for, has a connection of its own at ``synchronous=FULL``
(:meth:`Database.sqlite_urgent_batch`).
"""

from __future__ import annotations

__all__ = ["STORE_ERRORS", "Database", "UnitOfWork"]

import asyncio
import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Dialect, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bridge.config import normalise_database_url, redact_url
from bridge.errors import StoreUnavailable

T = TypeVar("T")


class _WriterBusy(Exception):
    """Another process holds the SQLite write lock right now."""


#: How long a SQLite writer waits for another process's write lock before giving up.
_SQLITE_BUSY_MS = 30000

#: Exceptions that mean "the database is not there right now" rather than "our SQL is wrong".
STORE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    OperationalError,
    InterfaceError,
    ConnectionError,
)


class PriorityLock:
    """An asyncio lock where urgent waiters go before ordinary ones.

    SQLite has one writer. The inbox's group commit holds acknowledgements back until it
    commits, so it must not queue behind the engine's bookkeeping: urgent waiters (the ACK
    path) are woken first, ordinary ones (event processing, relay releases) when none waits.
    """

    def __init__(self) -> None:
        self._locked = False
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._ordinary: deque[asyncio.Future[None]] = deque()

    @asynccontextmanager
    async def hold(self, *, urgent: bool = False) -> AsyncIterator[None]:
        """Hold the lock for the block."""
        await self._acquire(urgent)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, urgent: bool) -> None:
        if not self._locked and not self._urgent and not self._ordinary:
            self._locked = True
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._ordinary).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # we were handed the lock as we were cancelled
            else:
                (self._urgent if urgent else self._ordinary).remove(future)
            raise

    @property
    def urgent_waiting(self) -> bool:
        """True while an urgent waiter (the ACK path) is queued for the lock."""
        return any(not f.done() for f in self._urgent)

    def _release(self) -> None:
        for queue in (self._urgent, self._ordinary):
            while queue:
                future = queue.popleft()
                if not future.done():
                    future.set_result(None)  # ownership passes on; stays locked
                    return
        self._locked = False


class Database:
    """An async SQLAlchemy engine with the bridge's conventions.

    Args:
        url: a plain or driver-qualified URL (``sqlite:///x.db``, ``postgresql://...``).
        sqlite_synchronous: SQLite ``PRAGMA synchronous`` of urgent writes (the inbox, whose
            commit precedes every acknowledgement); ``FULL`` by default so an acknowledged
            message survives power loss, not only a killed process. Other writes run at
            ``NORMAL``: in WAL mode commits reach the disk in order, so the next urgent commit
            makes them durable too, and a power cut can only lose a tail of derived state
            (event outcomes, plans) that is rebuilt by replaying the still-pending events.
        pool_size: PostgreSQL pool size.
    """

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 10) -> None:
        self.url = normalise_database_url(url)
        self.redacted_url = redact_url(self.url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        kwargs: dict[str, Any] = {}
        if self.dialect == "postgresql":
            kwargs.update(
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                connect_args={"timeout": 5, "command_timeout": 30},
            )
        else:
            self._ensure_sqlite_dir()
            kwargs.update(connect_args={"timeout": 30})
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._sync_engine: Engine | None = None
        self._urgent: sqlite3.Connection | None = None
        self._reader: Engine | None = None
        self._reader_busy = False
        self._urgent_at = -1e9
        self._plain: dict[int, tuple[Any, str, Any, tuple[str, ...]]] = {}
        self._write_lock: PriorityLock | None = None
        self._urgent_sync = sqlite_synchronous.upper()
        if self.dialect == "sqlite":
            self._write_lock = PriorityLock()
            self._install_sqlite_pragmas()

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite store."""
        return self.dialect == "sqlite"

    def _ensure_sqlite_dir(self) -> None:
        path = self.url.split(":///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def _install_sqlite_pragmas(self) -> None:
        @event.listens_for(self.engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions start (the documented
            # recipe for pysqlite/aiosqlite), and set the pragmas WAL mode needs.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(self.engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Writes take the lock up front (IMMEDIATE): no deadlock between a reader that
            # upgrades to a writer and another process (the CLI) doing the same. Reads stay
            # DEFERRED so they never wait for a writer in WAL mode.
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

    @asynccontextmanager
    async def write(self, *, urgent: bool = False) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block ends and rolls back on error.

        Inside :meth:`unit_of_work` the block is a SAVEPOINT of the unit's transaction instead
        (it sees the unit's earlier writes and commits with the unit).

        Args:
            urgent: on SQLite, go before ordinary writers (the inbox's ACK path).

        Raises:
            StoreUnavailable: the database cannot be reached or is locked too long.
        """
        unit = self._unit()
        if unit is not None and unit.connection is not None:
            async with self._translate_errors(), unit.savepoint():
                yield unit.connection
            return
        if self._write_lock is None:
            async with self._translate_errors(), self.engine.begin() as conn:
                yield conn
            return
        async with (
            self._write_lock.hold(urgent=urgent),
            self._translate_errors(),
            self._inline_transaction(urgent) as conn,
        ):
            yield conn

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[UnitOfWork]:
        """One write transaction that every :meth:`write` and :meth:`read` of this task joins.

        The event processor handles a batch of events in one unit: on SQLite that is one
        ``BEGIN``/``COMMIT`` and no thread round trip per statement instead of a transaction
        per store call. Each event runs in :meth:`UnitOfWork.savepoint`, so one failing
        handler rolls back its own writes only. On PostgreSQL the unit shares nothing (every
        store call keeps its own transaction, as before): several daemons' relays and audit
        appends must not wait for a whole batch's row and advisory locks.

        Raises:
            StoreUnavailable: the database cannot be reached or is locked too long.
        """
        if self._write_lock is None:
            yield UnitOfWork(self, None, None)
            return
        async with self.write() as conn:
            unit = UnitOfWork(self, conn, self._write_lock)
            token = _UNIT.set(unit)
            try:
                yield unit
            finally:
                unit.closed = True
                _UNIT.reset(token)

    def _unit(self) -> UnitOfWork | None:
        """This task's open unit of work on this database, if any."""
        unit = _UNIT.get()
        if unit is None or unit.closed or unit.database is not self:
            return None
        return unit

    @asynccontextmanager
    async def _inline_transaction(self, urgent: bool) -> AsyncIterator[AsyncConnection]:
        """A write transaction whose statements run inline on the loop thread.

        ``BEGIN IMMEDIATE`` is tried inline without any busy wait and goes to a worker thread
        only when another process holds the write lock. ``COMMIT`` at ``NORMAL`` (everything
        but urgent writes) is inline too: in WAL mode it hands pages to the OS without an
        fsync. An urgent ``COMMIT`` (``FULL``, with its fsync) runs in the worker thread.
        Under load the event processor commits a unit per event (it yields the lock to the
        inbox), and two thread round trips per event cost more than its SQL.
        """
        level = self._urgent_sync if urgent else "NORMAL"
        sync_conn = self._sync_sqlite_engine().connect()
        try:
            try:
                transaction = self._begin_now(sync_conn, level)
            except _WriterBusy:
                sync_conn.close()
                sync_conn = self._sync_sqlite_engine().connect()
                transaction = await _in_thread(self._begin_immediate, sync_conn, level)
            try:
                yield _InlineConnection(self.engine, sync_conn)
            except BaseException:
                if transaction.is_active:
                    transaction.rollback()
                raise
            if urgent:
                await _in_thread(transaction.commit)
            else:
                transaction.commit()
        finally:
            sync_conn.close()

    @staticmethod
    def _begin_now(conn: Connection, level: str) -> Any:
        """``BEGIN IMMEDIATE`` only if the write lock is free right now, else :class:`_WriterBusy`."""
        raw = conn.connection.dbapi_connection
        assert raw is not None  # noqa: S101 - a live pooled sqlite3 connection
        raw.execute(f"PRAGMA synchronous={level}")  # outside any transaction
        raw.execute("PRAGMA busy_timeout=0")
        try:
            return conn.begin()
        except OperationalError as exc:
            raise _WriterBusy from exc
        finally:
            raw.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")

    @staticmethod
    def _begin_immediate(conn: Connection, level: str) -> Any:
        raw = conn.connection.dbapi_connection
        assert raw is not None  # noqa: S101 - a live pooled sqlite3 connection
        raw.execute(f"PRAGMA synchronous={level}")  # outside any transaction
        return conn.begin()

    async def write_batch(self, work: Callable[[Connection], T], *, urgent: bool = False) -> T:
        """Run ``work(connection)`` in one transaction, in one call to a worker thread on SQLite.

        The inbox's group commit uses this: the whole batch, commit included, is one thread
        call, so the event loop keeps reading frames while it runs. On PostgreSQL ``work`` runs
        through the async connection's ``run_sync``.

        Raises:
            StoreUnavailable: the database cannot be reached or is locked too long.
        """
        if urgent:
            self._urgent_at = time.monotonic()
        if self._write_lock is None:
            async with self.write(urgent=urgent) as conn:
                return await conn.run_sync(work)
        async with self._write_lock.hold(urgent=urgent), self._translate_errors():
            return await _in_thread(self._sync_transaction, work, urgent)

    async def sqlite_urgent_batch(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one ``synchronous=FULL`` transaction on the urgent SQLite connection.

        The inbox's group commit on SQLite: its own plain ``sqlite3`` connection, kept at
        ``FULL`` (no pragma flipping) and without SQLAlchemy, whose pool checkout, events and
        transaction objects cost more per batch than the batch's SQL — with one sequential
        sender every message is a batch. The batch runs on the loop thread when the write lock
        is free right now (``BEGIN IMMEDIATE`` without any busy wait: the statements take
        microseconds and the senders wait for the commit's fsync anyway); when another process
        holds the lock (``bridge outbox retry``) it waits in a worker thread instead, so the
        loop never does.

        Raises:
            StoreUnavailable: the file cannot be written or stays locked too long.
        """
        assert self._write_lock is not None  # noqa: S101 - SQLite only
        self._urgent_at = time.monotonic()
        async with self._write_lock.hold(urgent=True), self._translate_errors():
            conn = self._urgent_connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if conn.in_transaction or "locked" not in str(exc):
                    raise StoreUnavailable(self.redacted_url, "sqlite: " + str(exc)) from exc
                return await _in_thread(self._urgent_after_wait, conn, work)
            return self._run_and_commit(conn, work)

    def _urgent_after_wait(
        self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]
    ) -> T:
        """(worker thread) Wait for the write lock as long as any writer would, then run."""
        conn.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(self.redacted_url, "sqlite: " + str(exc)) from exc
        finally:
            conn.execute("PRAGMA busy_timeout=0")
        return self._run_and_commit(conn, work)

    def _run_and_commit(
        self, conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]
    ) -> T:
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreUnavailable(self.redacted_url, "sqlite: " + str(exc)) from exc
            raise
        return result

    def _urgent_connection(self) -> sqlite3.Connection:
        if self._urgent is None:
            conn = sqlite3.connect(
                self._sqlite_path(), isolation_level=None, check_same_thread=False, timeout=0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._urgent_sync}")
            conn.execute("PRAGMA foreign_keys=ON")
            self._urgent = conn
        return self._urgent

    @property
    def sqlite_dialect(self) -> Dialect:
        """The SQLite dialect, whose bind processors raw statements reuse."""
        return self._sync_sqlite_engine().dialect

    def urgent_within(self, seconds: float) -> bool:
        """True when an urgent batch (the inbox's ACK path) was written in the last ``seconds``.

        Background work (the event processor) uses it to leave the event loop and the writer
        to the senders while they are busy.
        """
        return time.monotonic() - self._urgent_at < seconds

    def _sync_transaction(self, work: Callable[[Connection], T], urgent: bool) -> T:
        engine = self._sync_sqlite_engine()
        with engine.connect() as conn:
            level = self._urgent_sync if urgent else "NORMAL"
            raw = conn.connection.dbapi_connection
            assert raw is not None  # noqa: S101 - a live pooled sqlite3 connection
            raw.execute(f"PRAGMA synchronous={level}")  # outside any transaction
            with conn.begin():
                return work(conn)

    def _sync_sqlite_engine(self) -> Engine:
        if self._sync_engine is None:
            self._sync_engine = self._sqlite_engine(begin="IMMEDIATE")
        return self._sync_engine

    def _sqlite_path(self) -> str:
        return self.url.split(":///", 1)[1].split("?", 1)[0]

    def _sqlite_engine(self, *, begin: str) -> Engine:
        """A plain (pysqlite) engine on the same file, one connection, ``BEGIN <begin>``."""
        path = self._sqlite_path()
        engine = create_engine(
            f"sqlite:///{path}",
            pool_size=1,
            max_overflow=0,
            connect_args={"check_same_thread": False, "timeout": 30},
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(f"BEGIN {begin}")

        return engine

    @staticmethod
    async def _set_synchronous(conn: AsyncConnection, level: str) -> None:
        """Set the pragma on this pooled connection, outside any transaction."""
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None  # noqa: S101 - a pooled aiosqlite connection
        await driver.execute(f"PRAGMA synchronous={level}")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads (a transaction is opened lazily and rolled back).

        Inside :meth:`unit_of_work` it is the unit's connection, so reads see its writes.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        unit = self._unit()
        if unit is not None and unit.connection is not None:
            async with self._translate_errors():
                yield unit.connection
            return
        async with self._translate_errors(), self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def lookup(self) -> AsyncIterator[AsyncConnection]:
        """A connection for short point reads by key (consent, an appointment, a conversation).

        On SQLite the statements run inline on a plain ``sqlite3`` connection: in WAL mode a
        reader never waits for a writer, and a read by primary or unique key costs
        microseconds, far less than the round trip to aiosqlite's thread the relay paid for
        every row it prepared. Not for scans or ``stream`` (use :meth:`read`). Inside
        :meth:`unit_of_work` it is the unit's connection, as :meth:`read` is.

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        unit = self._unit()
        shared = unit is not None and unit.connection is not None
        # One inline connection: a caller that awaits real I/O inside its block lets another
        # lookup start, which then goes the ordinary way rather than wait for it.
        if self._write_lock is None or shared or self._reader_busy:
            async with self.read() as conn:
                yield conn
            return
        self._reader_busy = True
        try:
            async with self._translate_errors():
                with self._sync_reader().connect() as sync_conn:
                    try:
                        yield _InlineConnection(self.engine, sync_conn)
                    finally:
                        sync_conn.rollback()  # ends the read snapshot before the next lookup
        finally:
            self._reader_busy = False

    async def fetch_plain(self, statement: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        """Rows of a point read whose columns and parameters are plain strings and numbers.

        On SQLite, outside a unit of work, the statement is compiled once and run straight on
        ``sqlite3``: SQLAlchemy's per-execution work cost ten times the query the relay makes
        for every row (the consent check). Values come back as the driver gives them, so only
        use it where no type conversion applies (no JSON, booleans or timestamps).

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        if self._write_lock is None or self._unit() is not None or self._reader_busy:
            async with self.lookup() as conn:
                return [tuple(row) for row in await conn.execute(statement, params)]
        compiled = self._plain.get(id(statement))
        if compiled is None or compiled[0] is not statement:
            done = statement.compile(dialect=self._sync_reader().dialect)
            compiled = (statement, done.string, done, tuple(done.positiontup or ()))
            self._plain[id(statement)] = compiled
        _, sql, done, order = compiled
        bound = done.construct_params(params)
        async with self._translate_errors():
            with self._sync_reader().connect() as sync_conn:
                driver = sync_conn.connection.dbapi_connection
                assert driver is not None  # noqa: S101 - a live pooled sqlite3 connection
                rows: list[tuple[Any, ...]] = driver.execute(
                    sql, tuple(bound[k] for k in order)
                ).fetchall()
        return rows

    def _sync_reader(self) -> Engine:
        """The engine of :meth:`lookup`: one ``sqlite3`` connection, only ever used inline."""
        if self._reader is None:
            self._reader = self._sqlite_engine(begin="DEFERRED")
        return self._reader

    @asynccontextmanager
    async def _translate_errors(self) -> AsyncIterator[None]:
        try:
            yield
        except STORE_ERRORS as exc:
            raise StoreUnavailable(self.redacted_url, type(exc).__name__) from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise StoreUnavailable(self.redacted_url, "connection lost") from exc
            raise

    async def ping(self) -> bool:
        """True when a trivial query succeeds."""
        try:
            async with self.read() as conn:
                await conn.execute(text("SELECT 1"))
        except StoreUnavailable:
            return False
        return True

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
        for engine in (self._sync_engine, self._reader):
            if engine is not None:
                engine.dispose()
        if self._urgent is not None:
            self._urgent.close()
            self._urgent = None


class UnitOfWork:
    """A write transaction shared by the store calls of one task (see Database.unit_of_work).

    Attributes:
        database: the database it belongs to.
        connection: the unit's connection (None on PostgreSQL, where nothing is shared).
        closed: True once the unit has ended; later calls open their own transactions.
    """

    def __init__(
        self, database: Database, connection: AsyncConnection | None, lock: PriorityLock | None
    ) -> None:
        self.database = database
        self.connection = connection
        self.closed = False
        self._lock = lock
        self._savepoints = 0

    @property
    def contended(self) -> bool:
        """True when the inbox waits for the SQLite writer lock: end the unit soon."""
        return self._lock is not None and self._lock.urgent_waiting

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """Roll back only the block's writes when it raises (one event's handler).

        The SAVEPOINT statements go straight to sqlite3: through SQLAlchemy's nested
        transactions each cost more than a handler's own SQL.
        """
        if self.connection is None or self.closed:
            yield
            return
        raw = self.connection.sync_connection
        assert raw is not None  # noqa: S101 - an inline connection always has one
        driver = raw.connection.dbapi_connection
        assert driver is not None  # noqa: S101 - a live pooled sqlite3 connection
        self._savepoints += 1
        name = f"unit_{self._savepoints}"
        driver.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            driver.execute(f"ROLLBACK TO {name}")
            driver.execute(f"RELEASE {name}")
            raise
        driver.execute(f"RELEASE {name}")


class _InlineConnection(AsyncConnection):
    """An :class:`AsyncConnection` over a plain ``sqlite3`` connection that runs each statement
    in the calling thread, without a round trip to a worker thread.

    Only what the stores use is inline (``execute`` and what builds on it; transactions and
    ``run_sync`` already are); ``stream`` is refused, as pysqlite has no server-side cursors.
    """

    async def execute(
        self,
        statement: Any,
        parameters: Any = None,
        *,
        execution_options: Any = None,
    ) -> Any:
        return self._proxied.execute(statement, parameters, execution_options=execution_options)

    async def exec_driver_sql(
        self, statement: str, parameters: Any = None, execution_options: Any = None
    ) -> Any:
        return self._proxied.exec_driver_sql(statement, parameters, execution_options)


#: The unit of work of the running task, if any (contextvars follow the task).
_UNIT: ContextVar[UnitOfWork | None] = ContextVar("bridge_unit_of_work", default=None)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread; a cancelled caller still waits for it to finish.

    The connection ``fn`` uses goes back to the pool (and the writer lock to the next writer)
    when the caller unwinds, so the thread must be done with it by then.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        raise
