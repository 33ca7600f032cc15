"""Shared fixtures: databases (SQLite per test, PostgreSQL per session), clean environment.

PostgreSQL tests use a fresh database created for the session on the server named by
``BRIDGE_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``). In CI
(``CI=true``) an unreachable server fails the run; elsewhere those tests are skipped with the
reason printed.
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text

from bridge.store import Database
from bridge.store.migrate import upgrade
from bridge.store.tables import metadata

PG_ADMIN_URL = os.environ.get("BRIDGE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
SHARED = Path(__file__).resolve().parents[2] / "shared"
CORPUS = SHARED / "corpus"


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def _create_pg_database() -> str:
    name = f"bridge_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


async def _drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session", name="pg_url")
def _pg_url() -> Iterator[str]:
    """URL of a fresh, migrated PostgreSQL database for this test session."""
    try:
        url = asyncio.run(_create_pg_database())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        reason = f"PostgreSQL unreachable at {PG_ADMIN_URL}: {type(exc).__name__}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)

    async def migrate() -> None:
        db = Database(url)
        await upgrade(db)
        await db.dispose()

    asyncio.run(migrate())
    yield url
    asyncio.run(_drop_pg_database(url))


async def _truncate(db: Database) -> None:
    async with db.write() as conn:
        for table in reversed(metadata.sorted_tables):
            if db.is_sqlite:
                await conn.execute(text(f"DELETE FROM {table.name}"))
            else:
                await conn.execute(text(f"TRUNCATE {table.name} RESTART IDENTITY CASCADE"))


@pytest.fixture(name="sqlite_db")
async def _sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite database in a temporary folder."""
    db = Database(f"sqlite:///{tmp_path}/bridge.db")
    await upgrade(db)
    yield db
    await db.dispose()


@pytest.fixture(name="pg_db")
async def _pg_db(pg_url: str) -> AsyncIterator[Database]:
    """The session's PostgreSQL database, emptied for this test."""
    db = Database(pg_url)
    await _truncate(db)
    yield db
    await db.dispose()


@pytest.fixture(
    name="db", params=["sqlite", pytest.param("postgres", marks=pytest.mark.external_service)]
)
def _db(request: pytest.FixtureRequest) -> Database:
    """Each contract test runs once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_db" if request.param == "sqlite" else "pg_db"
    db: Database = request.getfixturevalue(fixture)
    return db


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the operator's BRIDGE_* settings."""
    for name in list(os.environ):
        if name.startswith("BRIDGE_") and name != "BRIDGE_TEST_PG_URL":
            monkeypatch.delenv(name)


# --- PHI scan (issue 8): no synthetic phone number, name or secret the tests use may appear in
# any log line, exception or metric the suite produces. Captured stderr, captured logs and
# failure reports of every test are scanned; daemon subprocesses are scanned by
# tests/e2e/daemon.py; metrics by tests/integration/test_phi_scan.py. Stdout is not scanned:
# `bridge inspect` prints what it found there on purpose (DESIGN.md §4).
PHI_PATTERN = re.compile(
    r"\+?57 ?300 ?123 ?\d{4}|\b573009999999\b|\+?1 ?650 ?555 ?1234|\+?44 ?7700 ?900 ?\d{3}"
    r"|Ana María|Ana Lucía|Valentina|Ríos"
    r"|viewer-token-0123456789|operator-token-0123456789|EAAGm0PX4ZCpsBAExampleToken"
)
_PHI_FINDINGS: list[str] = []


def find_phi(text: str) -> list[str]:
    """Synthetic PHI or secrets found in ``text``."""
    return sorted(set(PHI_PATTERN.findall(text)))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect PHI found in what a test logged to stderr or in how it failed."""
    texts = [content for name, content in report.sections
             if "stderr" in name or name.startswith("Captured log")]
    if report.failed and report.longrepr is not None:
        texts.append(str(report.longrepr))
    for captured in texts:
        for found in find_phi(captured):
            _PHI_FINDINGS.append(f"{report.nodeid} ({report.when}): {found[:4]}…")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when any test leaked synthetic PHI into logs or errors."""
    if _PHI_FINDINGS:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("PHI scan: synthetic patient data found in logs or errors:",
                                red=True)
            for finding in sorted(set(_PHI_FINDINGS))[:50]:
                reporter.write_line(f"  {finding}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
