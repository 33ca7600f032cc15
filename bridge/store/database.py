"""The database handle: one async engine, a write path, and errors the daemon understands.

SQLite is the embedded default (WAL mode, one writer at a time, so writes in this process queue on
an asyncio lock instead of spinning on ``database is locked``); PostgreSQL is the production store
and the way to run several daemons. Connection failures become
:class:`bridge.errors.StoreUnavailable`, so callers never see driver exceptions.
"""

from __future__ import annotations

__all__ = ["STORE_ERRORS", "Database"]

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bridge.config import normalise_database_url, redact_url
from bridge.errors import StoreUnavailable

#: Exceptions that mean "the database is not there right now" rather than "our SQL is wrong".
STORE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    OperationalError,
    InterfaceError,
    ConnectionError,
)


class Database:
    """An async SQLAlchemy engine with the bridge's conventions.

    Args:
        url: a plain or driver-qualified URL (``sqlite:///x.db``, ``postgresql://...``).
        sqlite_synchronous: SQLite ``PRAGMA synchronous``; ``FULL`` by default so an
            acknowledged message survives power loss, not only a killed process.
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
        self._write_lock: asyncio.Lock | None = None
        if self.dialect == "sqlite":
            self._write_lock = asyncio.Lock()
            self._install_sqlite_pragmas(sqlite_synchronous)

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite store."""
        return self.dialect == "sqlite"

    def _ensure_sqlite_dir(self) -> None:
        path = self.url.split(":///", 1)[-1].split("?", 1)[0]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def _install_sqlite_pragmas(self, synchronous: str) -> None:
        @event.listens_for(self.engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide when transactions start (the documented
            # recipe for pysqlite/aiosqlite), and set the pragmas WAL mode needs.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
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
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block ends and rolls back on error.

        Raises:
            StoreUnavailable: the database cannot be reached or is locked too long.
        """
        if self._write_lock is None:
            async with self._translate_errors(), self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._translate_errors(), self.engine.connect() as conn:
            await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                yield conn

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
