"""Schema migrations from inside the bridge: ``bridge db upgrade`` / ``current`` and readiness.

Alembic is driven programmatically (no alembic.ini to install next to the daemon); the script
location is the ``bridge.migrations`` package, and every command runs on one of our own
connections so SQLite pragmas and PostgreSQL settings are the daemon's.
"""

from __future__ import annotations

__all__ = ["alembic_config", "current_revision", "head_revision", "upgrade"]

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from bridge.store.database import Database


def alembic_config(url: str | None = None) -> Config:
    """An alembic Config pointing at the packaged migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", "bridge:migrations")
    cfg.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    if url:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def head_revision() -> str | None:
    """The newest revision shipped with this version of the bridge."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(db: Database, target: str = "head") -> None:
    """Bring the database to ``target`` (head by default)."""

    def _upgrade(conn: Connection) -> None:
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, target)

    async with db.write() as conn:
        await conn.run_sync(_upgrade)


async def current_revision(db: Database) -> str | None:
    """The revision the database is at, or None when it was never migrated."""

    def _current(conn: Connection) -> str | None:
        return MigrationContext.configure(conn).get_current_revision()

    async with db.read() as conn:
        return await conn.run_sync(_current)
