"""The database handle: one async engine, a write path, and errors the daemon understands.

SQLite is the embedded default (WAL mode, one writer at a time, so writes in this process queue on
an asyncio lock instead of spinning on ``database is locked``); PostgreSQL is the production store
and the way to run several daemons. Connection failures become
:class:`bridge.errors.StoreUnavailable`, so callers never see driver exceptions.
"""

from __future__ import annotations

__all__ = ["STORE_ERRORS", "Database"]

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bridge.config import normalise_database_url, redact_url
from bridge.errors import StoreUnavailable

T = TypeVar("T")

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
            cursor.execute("PRAGMA busy_timeout=30000")
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

        Args:
            urgent: on SQLite, go before ordinary writers (the inbox's ACK path).

        Raises:
            StoreUnavailable: the database cannot be reached or is locked too long.
        """
        if self._write_lock is None:
            async with self._translate_errors(), self.engine.begin() as conn:
                yield conn
            return
        async with (
            self._write_lock.hold(urgent=urgent),
            self._translate_errors(),
            self.engine.connect() as conn,
        ):
            await conn.execution_options(sqlite_begin="IMMEDIATE")
            strict = urgent and self._urgent_sync != "NORMAL"
            if strict:
                await self._set_synchronous(conn, self._urgent_sync)
            try:
                async with conn.begin():
                    yield conn
            finally:
                if strict:  # the pooled connection goes back as every other one is
                    await self._set_synchronous(conn, "NORMAL")

    async def write_batch(self, work: Callable[[Connection], T], *, urgent: bool = False) -> T:
        """Run ``work(connection)`` in one transaction, in one call to a worker thread on SQLite.

        The inbox's group commit uses this: through the async driver every statement is a
        round trip to its thread, which cost more than the SQL itself; here the whole batch is
        one. On PostgreSQL ``work`` runs through the async connection's ``run_sync``.

        Raises:
            StoreUnavailable: the database cannot be reached or is locked too long.
        """
        if self._write_lock is None:
            async with self.write(urgent=urgent) as conn:
                return await conn.run_sync(work)
        async with self._write_lock.hold(urgent=urgent), self._translate_errors():
            return await asyncio.to_thread(self._sync_transaction, work, urgent)

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
            path = self.url.split(":///", 1)[1]
            engine = create_engine(f"sqlite:///{path}", pool_size=1, max_overflow=0,
                                   connect_args={"check_same_thread": False, "timeout": 30})

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.close()

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            self._sync_engine = engine
        return self._sync_engine

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

        Raises:
            StoreUnavailable: the database cannot be reached.
        """
        async with self._translate_errors(), self.engine.connect() as conn:
            yield conn

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
        if self._sync_engine is not None:
            self._sync_engine.dispose()
