"""Fill the outbox with due reminders, wait for the relay to drain them, and time the drain.

Rows go in through :class:`bridge.store.SqlOutbox.enqueue`, as the engine would put them; the
drain is watched with plain SQL reads (:mod:`bench._db`).
"""

from __future__ import annotations

__all__ = ["KIND", "DrainTimeout", "enqueue_due", "payload", "wait_drained"]

import asyncio
import time
from typing import Any

from bench._db import DbRef, query
from bridge.config import normalise_database_url
from bridge.ports import OutboxRow, SystemClock
from bridge.store import Database, SqlOutbox

#: States a row can no longer leave by itself.
_FINAL = ("sent", "failed", "dead", "cancelled", "held")


class DrainTimeout(RuntimeError):
    """The relay did not finish the rows in time."""


#: Row kind of the benchmark's rows: a results-ready notice, a template that needs neither an
#: appointment record nor an open 24-hour window.
KIND = "results"


def payload(index: int) -> dict[str, Any]:
    """A results-ready notice as the engine plans it (``bridge/engine/render.py`` renders it
    with the ``results`` mapping into the ``results_ready`` template), to a fictional
    +57300123xxxx number.
    """
    return {
        "message": "results",
        "address": f"+57300123{index % 10000:04d}",
        "language": "es",
        "given_name": "Bench",
        "result_id": f"bench-result-{index}",
    }


async def enqueue_due(database_url: str, run: str, count: int) -> float:
    """Insert ``count`` rows due now; returns the seconds the inserts took.

    Args:
        database_url: ``sqlite:///...`` or ``postgresql://...`` (the daemon's database).
        run: prefix of the idempotency keys, unique to this run.
        count: rows to insert (one patient each, so per-patient spacing never applies).
    """
    db = Database(normalise_database_url(database_url))
    outbox = SqlOutbox(db, SystemClock())
    now = SystemClock().now()
    started = time.perf_counter()
    try:
        for first in range(0, count, 1000):
            rows = [
                OutboxRow(
                    kind=KIND,
                    idempotency_key=f"bench:{run}:{i}",
                    due_at=now,
                    payload=payload(i),
                    recipient_key=f"bench-patient-{run}-{i}",
                )
                for i in range(first, min(count, first + 1000))
            ]
            await outbox.enqueue(rows)
    finally:
        await db.dispose()
    return time.perf_counter() - started


async def wait_drained(db: DbRef, run: str, count: int, *, timeout: float) -> dict[str, Any]:
    """Poll (every 0.2 s) until every row of ``run`` is in a final state; report the states.

    ``sent_at`` is not used for rates: the relay stamps a whole batch when it releases it, so
    the sandbox's per-message receive times are the precise clock.

    Raises:
        DrainTimeout: rows were still pending or leased after ``timeout`` seconds.
    """
    key = f"bench:{run}:%"
    deadline = time.monotonic() + timeout
    states: dict[str, int] = {}
    while True:
        rows = await query(
            db,
            "SELECT state, count(*) FROM outbox WHERE idempotency_key LIKE ? GROUP BY state",
            key,
        )
        states = {str(state): int(n) for state, n in rows}
        if sum(n for s, n in states.items() if s in _FINAL) >= count:
            break
        if time.monotonic() > deadline:
            raise DrainTimeout(f"outbox not drained in {timeout:.0f} s: {states}")
        await asyncio.sleep(0.2)
    sent = states.get("sent", 0)
    return {"states": states, "sent": sent}
