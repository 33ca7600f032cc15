"""Two relays in two OS processes on one PostgreSQL: each row handed out exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from bridge.ports import OutboxRow, SystemClock
from bridge.store import SqlOutbox
from bridge.store.tables import outbox

WORKER = Path(__file__).with_name("relay_worker.py")
pytestmark = pytest.mark.external_service


def spawn(url: str, mode: str, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(WORKER), url, mode, str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def enqueue(db, n: int) -> list[int]:
    now = datetime.now(UTC)
    rows = [OutboxRow(kind="reminder", idempotency_key=f"race-{i}", due_at=now,
                      payload={"to": "+573001230000", "kind": "text", "content": {"body": "x"}})
            for i in range(n)]
    return await SqlOutbox(db, SystemClock()).enqueue(rows)


class TestTwoProcessRelays:
    async def test_every_row_is_sent_exactly_once_by_two_racing_processes(self, pg_db, pg_url):
        # Given 600 due rows
        ids = await enqueue(pg_db, 600)
        # When two relay processes drain them at the same time
        workers = [spawn(pg_url, "send", 1.5) for _ in range(2)]
        outputs = [w.communicate(timeout=120)[0] for w in workers]
        # Then every row was sent once, both processes took part, and all are marked sent
        sent = [int(line.split()[1]) for out in outputs for line in out.splitlines()
                if line.startswith("SENT")]
        duplicates = [i for i, n in Counter(sent).items() if n > 1]
        assert duplicates == []
        assert sorted(sent) == sorted(ids)
        assert all(w.returncode == 0 for w in workers)
        assert all("SENT" in out for out in outputs)
        async with pg_db.read() as conn:
            states = Counter((await conn.execute(select(outbox.c.state))).scalars())
        assert states == {"sent": 600}

    async def test_rows_of_a_relay_killed_mid_lease_are_taken_again_after_expiry(self, pg_db, pg_url):
        ids = await enqueue(pg_db, 40)
        holder = spawn(pg_url, "hold", 3.0)
        held = []
        assert holder.stdout is not None
        for line in holder.stdout:
            if line.startswith("HELD"):
                held.append(int(line.split()[1]))
            if line.startswith("READY"):
                break
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate(timeout=10)
        killed_at = time.monotonic()
        assert sorted(held) == sorted(ids)
        # Before the lease expires nobody may take the rows
        box = SqlOutbox(pg_db, SystemClock())
        early = await box.acquire("other", timedelta(seconds=30), 100, datetime.now(UTC))
        assert early == []
        # After it expires another relay process sends every one of them
        await asyncio.sleep(max(0.0, 3.2 - (time.monotonic() - killed_at)))
        out, _ = spawn(pg_url, "send", 1.0).communicate(timeout=60)
        sent = sorted(int(line.split()[1]) for line in out.splitlines() if line.startswith("SENT"))
        assert sent == sorted(ids)
