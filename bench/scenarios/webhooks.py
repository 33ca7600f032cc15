"""``webhooks``: signed WhatsApp status webhooks into ``bridge run``'s ``/webhooks/whatsapp``.

Two runs: one status per POST, and batches of 50 statuses per POST. Figures: POSTs/s,
updates/s stored, p50/p99 latency, the daemon's CPU seconds and peak RSS, and a check after
the daemon stopped that every acknowledged POST is an inbox row and every status in it is there
(the inbox holds one row per POST; its payload holds the statuses). Targets: DESIGN.md §5.
"""

from __future__ import annotations

__all__ = ["run"]

import secrets
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench._daemon import Daemon
from bench._db import DbRef, query
from bench._http_load import HttpLoadSpec
from bench._loadgen import run_generator
from bench._messages import sign, status_webhook, wamid
from bench._net import free_port
from bench._options import Options, progress
from bench._wrk import run_wrk, wrk_path

PATH = "/webhooks/whatsapp"
PHONE_NUMBER_ID = "109876543210987"

#: DESIGN.md §5
TARGET_SINGLE_POSTS = 4000.0
TARGET_SINGLE_P99_MS = 25.0
TARGET_BATCH_UPDATES = 20000.0

_CONFIG = """
[bridge]
channel = "whatsapp"

[whatsapp]
base_url = "http://127.0.0.1:{unused}"
phone_number_id = "{phone}"
"""


async def _probe(daemon: Daemon, app_secret: str) -> str | None:
    """POST one signed status; return why the route cannot be measured, or None."""
    import asyncio

    body = status_webhook("PROBE", 0, 1, phone_number_id=PHONE_NUMBER_ID)
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
    try:
        writer.write(
            f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Hub-Signature-256: {sign(app_secret, body)}\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n".encode()
            + body
        )
        head = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status = head[9:12].decode(errors="replace")
    if status == "404":
        return f"POST {PATH} is not mounted by the daemon (404): the channel's routes are not wired"
    if not status.startswith("2"):
        return f"POST {PATH} answered {status} to a correctly signed status webhook"
    return None


async def _load(
    daemon: Daemon,
    options: Options,
    app_secret: str,
    *,
    batch: int,
    posts: int,
    connections: int,
    label: str,
) -> dict[str, Any]:
    spec = HttpLoadSpec(
        port=daemon.http_port,
        path=PATH,
        connections=connections,
        posts=posts,
        batch=batch,
        run=uuid.uuid4().hex[:6].upper(),
        app_secret=app_secret,
        phone_number_id=PHONE_NUMBER_ID,
        time_limit_s=options.pick(60, 20),
        acked_path=str(options.workdir / f"{label}.acked"),
    )
    if wrk_path():
        result = await run_wrk(spec, options.workdir)
    else:
        result = await run_generator(
            "bench._http_load", spec.__dict__, timeout=spec.time_limit_s + 120
        )
    result["run"] = spec.run
    result["batch"] = batch
    result["updates_per_s"] = (
        round(result["ok_2xx"] * batch / result["elapsed_s"], 1) if result["elapsed_s"] else None
    )
    return result


async def _stored_statuses(db: DbRef) -> tuple[int, set[str]]:
    rows = await query(db, "SELECT payload FROM inbox WHERE connector = 'whatsapp'")
    ids: set[str] = set()
    for (payload,) in rows:
        body = orjson.loads(bytes(payload))
        for entry in body.get("entry", []):
            for change in entry.get("changes", []):
                for status in change.get("value", {}).get("statuses", []):
                    ids.add(status["id"])
    return len(rows), ids


def _expected(result: dict[str, Any], acked_path: Path) -> list[str]:
    """wamids the daemon acknowledged (asyncio client) or at least sent (wrk)."""
    batch, run = result["batch"], result["run"]
    text = acked_path.read_text(encoding="ascii") if acked_path.exists() else ""
    if text:
        indexes = [int(x) for x in text.split("\n")]
    else:  # wrk: every POST sent got an answer (ok_2xx counts them); check all sent
        indexes = list(range(min(result["sent"], result["ok_2xx"])))
    return [wamid(run, i * batch + n) for i in indexes for n in range(batch)]


async def run(options: Options) -> dict[str, Any]:
    """Run the scenario and return its figures."""
    app_secret = secrets.token_hex(16)
    daemon = Daemon(
        options.workdir,
        _CONFIG.format(unused=free_port(), phone=PHONE_NUMBER_ID),
        env={"BRIDGE_WHATSAPP_APP_SECRET": app_secret},
        uvloop=options.uvloop,
    )
    await daemon.start()
    figures: dict[str, Any] = {"scenario": "webhooks", "database": "sqlite"}
    try:
        reason = await _probe(daemon, app_secret)
        if reason is not None:
            return {"scenario": "webhooks", "skipped": reason}
        runs = (
            ("single", 1, options.pick(40_000, 8_000), 32),
            ("batch50", 50, options.pick(2_000, 400), 16),
        )
        for label, batch, posts, connections in runs:
            progress(f"webhooks: {label}, {posts} POSTs of {batch} status(es)")
            before = daemon.sample().cpu_s
            result = await _load(
                daemon,
                options,
                app_secret,
                batch=batch,
                posts=posts,
                connections=connections,
                label=label,
            )
            result["daemon_cpu_s"] = round(daemon.sample().cpu_s - before, 2)
            figures[label] = result
        figures["peak_rss_mb"] = daemon.sample().peak_rss_mb
    finally:
        figures["exit_code"] = await daemon.stop()
    rows, stored = await _stored_statuses(DbRef(sqlite_path=daemon.sqlite_path))
    expected = [
        w
        for label in ("single", "batch50")
        for w in _expected(figures[label], options.workdir / f"{label}.acked")
    ]
    figures["check"] = {
        "inbox_rows": rows,
        "statuses_in_db": len(stored),
        "statuses_acknowledged": len(expected),
        "acknowledged_missing_from_db": sum(1 for w in expected if w not in stored),
    }
    single, batch = figures["single"], figures["batch50"]
    figures["targets_met"] = {
        "single_posts>=4000": (single.get("rate_per_s") or 0) >= TARGET_SINGLE_POSTS,
        "single_p99<25ms": (single.get("p99_ms") or 1e9) < TARGET_SINGLE_P99_MS,
        "batch_updates>=20000": (batch.get("updates_per_s") or 0) >= TARGET_BATCH_UPDATES,
        "none_lost": figures["check"]["acknowledged_missing_from_db"] == 0,
        "rss<150MB": figures["peak_rss_mb"] < 150,
    }
    return figures
