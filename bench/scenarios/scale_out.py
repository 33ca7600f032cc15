"""``scale-out``: one, then two ``bridge run`` daemons on one PostgreSQL draining one outbox.

Both daemons send to the same sandbox at the channel's highest configurable rate. Phase one
drains N rows with daemon A alone; phase two starts daemon B beside it and drains N new rows.
Figures: each phase's rate (sandbox receive times), the ratio (target at least 1.8 times), each daemon's
CPU seconds (both must work in phase two), and duplicate sends, i.e. one outbox id received twice by the
sandbox (must be 0). Targets: DESIGN.md §5.
"""

from __future__ import annotations

__all__ = ["run"]

import contextlib
import time
import uuid
from typing import Any

from bench._daemon import Daemon
from bench._db import DbRef
from bench._options import Options, progress
from bench._outbox import enqueue_due, wait_drained
from bench._pg import fresh_database, pg_reachable
from bench._sandbox import SandboxProcess

TARGET_RATIO = 1.8
#: The WhatsApp channel's highest configurable rate (``[whatsapp] rate_per_second``).
RATE = 1000

_CONFIG = """
[bridge]
channel = "whatsapp"

[whatsapp]
base_url = "{base_url}"
rate_per_second = {rate}
"""


async def _phase(
    daemons: list[Daemon], sandbox: SandboxProcess, pg_url: str, count: int
) -> dict[str, Any]:
    await sandbox.reset()
    run = uuid.uuid4().hex[:8]
    cpu_before = [d.sample().cpu_s for d in daemons]
    started = time.monotonic()
    await enqueue_due(pg_url, run, count)
    drained = await wait_drained(DbRef(pg_url=pg_url), run, count, timeout=count / 100 + 120)
    figures: dict[str, Any] = {"daemons": len(daemons), "rows": count, **drained}
    figures["drain_s"] = round(time.monotonic() - started, 2)
    figures["daemon_cpu_s"] = [
        round(d.sample().cpu_s - before, 2) for d, before in zip(daemons, cpu_before, strict=True)
    ]
    figures["sandbox"] = await sandbox.receipt_figures()
    figures["rate_per_s"] = figures["sandbox"]["receive_rate_per_s"]
    return figures


async def run(options: Options) -> dict[str, Any]:
    """Run the scenario and return its figures."""
    if not await pg_reachable(options.pg_url):
        return {
            "scenario": "scale-out",
            "skipped": f"PostgreSQL not reachable at {options.pg_url.split('@')[-1]}",
        }
    count = options.pick(10_000, 3_000)
    figures: dict[str, Any] = {
        "scenario": "scale-out",
        "database": "postgresql",
        "configured_rate_per_daemon": RATE,
    }
    async with (
        fresh_database(options.pg_url, "bench_scale") as pg_url,
        SandboxProcess(options.workdir) as sandbox,
    ):
        config = _CONFIG.format(base_url=sandbox.url, rate=RATE)
        daemons = [
            Daemon(
                options.workdir / name,
                config,
                name=name,
                database_url=pg_url,
                uvloop=options.uvloop,
            )
            for name in ("a", "b")
        ]
        try:
            # one at a time: both would otherwise race to migrate the fresh database
            await daemons[0].start()
            progress(f"scale-out: one daemon, {count} rows")
            figures["one"] = await _phase(daemons[:1], sandbox, pg_url, count)
            await daemons[1].start()
            progress(f"scale-out: two daemons, {count} rows")
            figures["two"] = await _phase(daemons, sandbox, pg_url, count)
            figures["peak_rss_mb"] = [d.sample().peak_rss_mb for d in daemons]
        finally:
            for daemon in daemons:
                with contextlib.suppress(Exception):
                    await daemon.stop()
    one, two = figures["one"].get("rate_per_s"), figures["two"].get("rate_per_s")
    ratio = round(two / one, 2) if one and two else None
    duplicates = (
        figures["one"]["sandbox"]["duplicate_sends"] + figures["two"]["sandbox"]["duplicate_sends"]
    )
    figures["ratio"] = ratio
    figures["duplicate_sends"] = duplicates
    figures["targets_met"] = {
        "ratio>=1.8": (ratio or 0) >= TARGET_RATIO,
        "zero_duplicate_sends": duplicates == 0,
        "rss<150MB": all(m < 150 for m in figures["peak_rss_mb"]),
    }
    return figures
