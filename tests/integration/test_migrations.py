"""Migrations create exactly the models' schema, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bridge.store.migrate import current_revision, head_revision
from bridge.store.tables import metadata


class TestMigrations:
    async def test_upgraded_database_is_at_head_and_matches_the_models(self, db):
        assert await current_revision(db) == head_revision()

        def diff(conn):
            context = MigrationContext.configure(conn, opts={"compare_type": True,
                                                             "render_as_batch": True})
            return compare_metadata(context, metadata)

        async with db.read() as conn:
            differences = await conn.run_sync(diff)
        assert differences == []
