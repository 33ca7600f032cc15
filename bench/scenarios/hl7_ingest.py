"""``hl7-ingest``: SIU^S12 over MLLP into ``bridge run`` (ACK after commit), and the hl7apy peer.

Figures: messages/s and ACK latency p50/p99 over 16 concurrent connections and over one
sequential connection, the daemon's CPU seconds and peak RSS, a check that every ``AA`` control
id is in the inbox table after the daemon stopped, the same workload against the hl7apy peer
(reconnecting per message, as it requires), and the ratio. Targets: DESIGN.md §5.
"""

from __future__ import annotations

__all__ = ["run"]

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench._daemon import Daemon
from bench._db import DbRef, query
from bench._floor import storage_floor
from bench._loadgen import run_generator
from bench._messages import siu_frame
from bench._net import free_port
from bench._options import Options, progress
from bench._peer import PeerServer
from bench._pg import fresh_database

_CONFIG = """
[bridge]
connectors = ["hl7v2"]
channel = ""

[connectors.hl7v2]
host = "127.0.0.1"
"""

#: DESIGN.md §5
TARGET_RATE_16 = 4000.0
TARGET_RATE_1 = 1500.0
TARGET_P99_1_MS = 10.0
TARGET_RATIO = 50.0


async def _mllp(
    port: int, *, connections: int, count: int, mode: str, limit_s: float, acked: Path
) -> dict[str, Any]:
    spec = {
        "host": "127.0.0.1",
        "port": port,
        "connections": connections,
        "count": count,
        "run": uuid.uuid4().hex[:6].upper(),
        "mode": mode,
        "time_limit_s": limit_s,
        "acked_path": str(acked),
    }
    return await run_generator("bench._mllp_load", spec, timeout=limit_s + 120)


class BrokenPiece(RuntimeError):
    """The bridge's side cannot be measured: a piece it needs is broken."""


def _read_ids(path: Path) -> list[str]:
    text = path.read_text(encoding="ascii")
    return text.split("\n") if text else []


@contextlib.asynccontextmanager
async def _database(options: Options) -> AsyncIterator[str | None]:
    if not options.pg:
        yield None
        return
    async with fresh_database(options.pg_url, "bench_hl7") as url:
        yield url


async def _missing(db: DbRef, table_ids: str, acked: list[str]) -> int:
    rows = await query(db, table_ids)
    stored = {str(r[0]).strip() for r in rows}
    return sum(1 for ident in acked if ident not in stored)


async def _bridge(options: Options, pg_url: str | None) -> dict[str, Any]:
    work = options.workdir / "bridge"
    work.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(
        work, _CONFIG, database_url=pg_url, mllp_port=free_port(), uvloop=options.uvloop
    )
    assert daemon.mllp_port is not None
    await daemon.start()
    figures: dict[str, Any] = {}
    acked: list[str] = []
    try:
        progress("hl7-ingest: warm-up")
        warmup = await _mllp(
            daemon.mllp_port,
            connections=4,
            count=400,
            mode="persistent",
            limit_s=30,
            acked=work / "warmup.ids",
        )
        acked += _read_ids(work / "warmup.ids")
        if not acked:
            raise BrokenPiece(
                f"the daemon's MLLP listener acknowledged nothing (warm-up: {warmup['errors']} "
                f"connection errors, ACK codes {warmup['ack_codes']}); see {daemon.log_path}"
            )
        runs = (
            ("c16", 16, options.pick(40_000, 6_000)),
            ("c1", 1, options.pick(15_000, 3_000)),
        )
        for label, connections, count in runs:
            progress(f"hl7-ingest: bridge, {connections} connection(s), {count} messages")
            before = daemon.sample().cpu_s
            result = await _mllp(
                daemon.mllp_port,
                connections=connections,
                count=count,
                mode="persistent",
                limit_s=options.pick(60, 20),
                acked=work / f"{label}.ids",
            )
            result["daemon_cpu_s"] = round(daemon.sample().cpu_s - before, 2)
            figures[label] = result
            acked += _read_ids(work / f"{label}.ids")
        figures["peak_rss_mb"] = daemon.sample().peak_rss_mb
    finally:
        figures["exit_code"] = await daemon.stop()
    if pg_url is None:
        progress("hl7-ingest: storage floor (the same rows committed bare)")
        figures["storage_floor"] = await asyncio.to_thread(
            storage_floor, daemon.sqlite_path, work, seconds=options.pick(5, 2)
        )
    db = DbRef(pg_url=pg_url) if pg_url else DbRef(sqlite_path=daemon.sqlite_path)
    rows = await query(db, "SELECT count(*) FROM inbox WHERE connector = 'hl7v2'")
    figures["check"] = {
        "acked_aa": len(acked),
        "inbox_rows": rows[0][0],
        "acked_missing_from_inbox": await _missing(
            db, "SELECT source_id FROM inbox WHERE connector = 'hl7v2'", acked
        ),
    }
    return figures


async def _peer(options: Options) -> dict[str, Any]:
    work = options.workdir / "peer"
    work.mkdir(parents=True, exist_ok=True)
    db_path = work / "peer.db"
    figures: dict[str, Any] = {}
    acked: list[str] = []
    async with PeerServer(db_path) as peer:
        runs = (
            ("c16", 16, options.pick(1_500, 200)),
            ("c1", 1, options.pick(500, 100)),
        )
        for label, connections, count in runs:
            progress(f"hl7-ingest: hl7apy peer, {connections} connection(s), {count} messages")
            before = peer.sample().cpu_s
            result = await _mllp(
                peer.port,
                connections=connections,
                count=count,
                mode="reconnect",
                limit_s=options.pick(40, 10),
                acked=work / f"{label}.ids",
            )
            result["peer_cpu_s"] = round(peer.sample().cpu_s - before, 2)
            figures[label] = result
            acked += _read_ids(work / f"{label}.ids")
        figures["peak_rss_mb"] = peer.sample().peak_rss_mb
    db = DbRef(sqlite_path=db_path)
    figures["check"] = {
        "acked_aa": len(acked),
        "acked_missing_from_db": await _missing(db, "SELECT source_id FROM inbox", acked),
    }
    return figures


def _ratio(a: dict[str, Any], b: dict[str, Any], label: str) -> float | None:
    mine, theirs = a[label].get("rate_per_s"), b[label].get("rate_per_s")
    return round(mine / theirs, 1) if mine and theirs else None


async def run(options: Options) -> dict[str, Any]:
    """Run the scenario and return its figures."""
    skipped: str | None = None
    try:
        async with _database(options) as pg_url:
            bridge = await _bridge(options, pg_url)
    except BrokenPiece as exc:
        skipped = str(exc)
    peer = await _peer(options)
    if skipped is not None:
        return {"scenario": "hl7-ingest", "skipped": skipped, "peer_hl7apy": peer}
    ratio = _ratio(bridge, peer, "c16")
    c16, c1 = bridge["c16"], bridge["c1"]
    floor = bridge.get("storage_floor") or {}
    return {
        "scenario": "hl7-ingest",
        "database": "postgresql" if options.pg else "sqlite",
        "message_bytes": len(siu_frame("X", 0)),
        "bridge": bridge,
        "peer_hl7apy": peer,
        "ratio_c16": ratio,
        "ratio_c1": _ratio(bridge, peer, "c1"),
        # how much of the machine's storage ceiling the bridge reaches (see bench/_floor.py)
        "share_of_floor": {
            label: round(bridge[label]["rate_per_s"] / floor[label]["rate_per_s"], 2)
            for label in ("c16", "c1")
            if label in floor and bridge[label].get("rate_per_s")
        },
        "floor_allows_target": {
            "rate_c16>=4000": floor["c16"]["rate_per_s"] >= TARGET_RATE_16,
            "rate_c1>=1500": floor["c1"]["rate_per_s"] >= TARGET_RATE_1,
        }
        if "c1" in floor
        else None,
        "targets_met": {
            "rate_c16>=4000": (c16.get("rate_per_s") or 0) >= TARGET_RATE_16,
            "rate_c1>=1500": (c1.get("rate_per_s") or 0) >= TARGET_RATE_1,
            "p99_c1<10ms": (c1.get("p99_ms") or 1e9) < TARGET_P99_1_MS,
            "ratio>=50": (ratio or 0) >= TARGET_RATIO,
            "none_lost": bridge["check"]["acked_missing_from_inbox"] == 0,
            "rss<150MB": bridge["peak_rss_mb"] < 150,
        },
    }
