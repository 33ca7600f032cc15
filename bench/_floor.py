"""The storage floor of HL7 ingest on this machine: the bridge's own rows, committed bare.

The ingest figures depend on the disk as much as on the code: every acknowledged message costs
a ``synchronous=FULL`` commit of its inbox row and its event row, with their indexes. This
replays exactly those rows (copied from the daemon's database after a run, ids made unique)
with nothing but ``sqlite3`` — no parsing, no event loop, no SQLAlchemy — one commit per
message and one per 16 messages, as one sequential sender and sixteen concurrent ones cause.
No code on top of that storage can go faster, so the bridge's figure divided by this one says
how much of the ceiling the code leaves unused, and a target above the floor cannot be met on
the machine at hand whatever the code does.
"""

from __future__ import annotations

__all__ = ["storage_floor"]

import shutil
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any


def storage_floor(database: Path, workdir: Path, *, seconds: float = 3.0) -> dict[str, Any]:
    """Messages per second when committing the bridge's rows bare, per batch size.

    Args:
        database: a bridge SQLite database holding at least one HL7 inbox row and its event.
        workdir: where the copy is written (and removed).
        seconds: how long each batch size is measured.

    Returns:
        ``{"c1": {...}, "c16": {...}, "wal_pages_per_message": ...}``, or ``{"skipped": ...}``.
    """
    copy = workdir / "floor.db"
    shutil.copyfile(database, copy)
    conn = sqlite3.connect(copy, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        template = _template(conn)
        if template is None:
            return {"skipped": "no HL7 inbox row with an event to copy"}
        figures: dict[str, Any] = {}
        for label, batch in (("c1", 1), ("c16", 16)):
            figures[label] = _measure(conn, template, batch, seconds)
        figures["wal_pages_per_message"] = _pages_per_message(conn, template)
        return figures
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)


_Rows = tuple[list[str], tuple[Any, ...], list[str], tuple[Any, ...]]


def _template(conn: sqlite3.Connection) -> _Rows | None:
    inbox_cols = [r[1] for r in conn.execute("PRAGMA table_info(inbox)")]
    event_cols = [r[1] for r in conn.execute("PRAGMA table_info(event)") if r[1] != "seq"]
    inbox_row = conn.execute(
        f"SELECT {', '.join(inbox_cols)} FROM inbox WHERE connector = 'hl7v2' "  # noqa: S608
        "AND id IN (SELECT inbox_id FROM event) LIMIT 1"
    ).fetchone()
    if inbox_row is None:
        return None
    event_row = conn.execute(
        f"SELECT {', '.join(event_cols)} FROM event WHERE inbox_id = ?",  # noqa: S608
        (inbox_row[inbox_cols.index("id")],),
    ).fetchone()
    return inbox_cols, tuple(inbox_row), event_cols, tuple(event_row)


def _insert(conn: sqlite3.Connection, template: _Rows) -> None:
    inbox_cols, inbox_row, event_cols, event_row = template
    row_id = uuid.uuid4().hex
    values = dict(zip(inbox_cols, inbox_row, strict=True))
    values.update(id=row_id, dedupe_key=f"floor|{row_id}")
    conn.execute(
        f"INSERT INTO inbox ({', '.join(values)}) "  # noqa: S608 - names from the schema
        f"VALUES ({', '.join('?' for _ in values)})",
        tuple(values.values()),
    )
    event_values = dict(zip(event_cols, event_row, strict=True))
    event_values.update(event_id=uuid.uuid4().hex, inbox_id=row_id, state="pending")
    conn.execute(
        f"INSERT INTO event ({', '.join(event_values)}) "  # noqa: S608 - names from the schema
        f"VALUES ({', '.join('?' for _ in event_values)})",
        tuple(event_values.values()),
    )


def _measure(
    conn: sqlite3.Connection, template: _Rows, batch: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    messages = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        begun = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(batch):
            _insert(conn, template)
        conn.execute("COMMIT")
        latencies.append(time.perf_counter() - begun)
        messages += batch
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "messages": messages,
        "rate_per_s": round(messages / elapsed, 1),
        "commit_p50_ms": round(latencies[len(latencies) // 2] * 1000, 3),
        "commit_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 3),
    }


def _pages_per_message(conn: sqlite3.Connection, template: _Rows, count: int = 300) -> float:
    """WAL frames one single-message commit writes (each a page plus its header)."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    for _ in range(count):
        conn.execute("BEGIN IMMEDIATE")
        _insert(conn, template)
        conn.execute("COMMIT")
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    wal = Path(conn.execute("PRAGMA database_list").fetchone()[2] + "-wal")
    conn.execute("PRAGMA wal_autocheckpoint=1000")
    return round(wal.stat().st_size / (page_size + 24) / count, 1)
