"""Read the daemon's database after a run, to check that what was acknowledged is there.

Reads go straight through ``sqlite3`` or ``asyncpg`` (not the bridge's store), so the check does
not trust the code it is checking.
"""

from __future__ import annotations

__all__ = ["DbRef", "query"]

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]


@dataclass(frozen=True, slots=True)
class DbRef:
    """Either a SQLite file or a PostgreSQL URL."""

    sqlite_path: Path | None = None
    pg_url: str | None = None

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "postgresql" if self.pg_url else "sqlite"


def _sqlite_rows(path: Path, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


async def query(db: DbRef, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one read-only statement; ``?`` placeholders work on both databases.

    Args:
        db: where to read.
        sql: the statement, with ``?`` placeholders.
        args: their values.
    """
    if db.sqlite_path is not None:
        return await asyncio.to_thread(_sqlite_rows, db.sqlite_path, sql, args)
    assert db.pg_url is not None
    numbered = sql
    for n in range(1, len(args) + 1):
        numbered = numbered.replace("?", f"${n}", 1)
    conn = await asyncpg.connect(db.pg_url)
    try:
        return [tuple(r) for r in await conn.fetch(numbered, *args)]
    finally:
        await conn.close()
