"""A fresh PostgreSQL database per scenario, created before and dropped after."""

from __future__ import annotations

__all__ = ["fresh_database", "pg_reachable"]

import contextlib
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]


def _with_db(server_url: str, name: str) -> str:
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def pg_reachable(server_url: str) -> bool:
    """Whether the server answers on its ``postgres`` database."""
    try:
        conn = await asyncpg.connect(_with_db(server_url, "postgres"), timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@contextlib.asynccontextmanager
async def fresh_database(server_url: str, prefix: str = "bench") -> AsyncIterator[str]:
    """Create ``<prefix>_<random>``, yield its URL, drop it afterwards (even on failure).

    Args:
        server_url: ``postgresql://postgres@127.0.0.1:5432`` (any database path is ignored).
        prefix: name prefix, so leftovers are recognisable.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_with_db(server_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_db(server_url, name)
    finally:
        admin = await asyncpg.connect(_with_db(server_url, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
