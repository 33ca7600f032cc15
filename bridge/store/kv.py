"""Named values in the ``kv`` table, namespaced per plugin: the :class:`PluginState` port."""

from __future__ import annotations

__all__ = ["KvState"]

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from bridge.ports import Clock
from bridge.store.database import Database
from bridge.store.tables import kv


class KvState:
    """:class:`bridge.ports.PluginState` over ``kv``, every name prefixed with ``namespace``."""

    def __init__(self, db: Database, clock: Clock, namespace: str) -> None:
        self._db = db
        self._clock = clock
        self._prefix = f"{namespace}:"

    async def get(self, name: str) -> str | None:
        """The value, or None."""
        async with self._db.lookup() as conn:
            value: str | None = (
                await conn.execute(select(kv.c.value).where(kv.c.name == self._prefix + name))
            ).scalar_one_or_none()
        return value

    async def set(self, name: str, value: str) -> None:
        """Insert or replace the value."""
        now = self._clock.now()
        insert = sqlite.insert if self._db.is_sqlite else postgresql.insert
        stmt = insert(kv).values(name=self._prefix + name, value=value, updated_at=now)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"], set_={"value": value, "updated_at": now}
        )
        async with self._db.write() as conn:
            await conn.execute(stmt)
