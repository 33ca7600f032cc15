"""``relay``: due outbox rows sent by ``bridge run``'s relay to the sandbox, over real HTTP.

Three runs, each with a fresh daemon, database and sandbox: the WhatsApp channel throttled to
80 and to 1,000 messages/s, and unthrottled. Rows are enqueued with
:meth:`bridge.store.SqlOutbox.enqueue` while the daemon runs. Figures: the rate at which the
sandbox received them (its per-message receive times), the drain time, the daemon's CPU seconds
per 1,000 sends, peak RSS, and duplicate sends seen by the sandbox. Targets: DESIGN.md §5.
"""

from __future__ import annotations

__all__ = ["run"]

import time
import uuid
from pathlib import Path
from typing import Any

from bench._daemon import Daemon, DaemonFailed
from bench._db import DbRef
from bench._options import Options, progress
from bench._outbox import enqueue_due, wait_drained
from bench._sandbox import SandboxProcess

#: DESIGN.md §5
TARGET_THROTTLED = 1000.0
TOLERANCE = 0.02
TARGET_UNTHROTTLED = 2000.0

#: What "unthrottled" asks for: the channel's ``rate_per_second = 0`` (no local limit, which it
#: allows against the loopback sandbox only; it refuses anything above 1,000).
UNTHROTTLED_RATE = 0

_CONFIG = """
[bridge]
channel = "whatsapp"

[whatsapp]
base_url = "{base_url}"
rate_per_second = {rate}
"""


def _config_error(log_path: Path) -> str:
    """The daemon's one-line reason for refusing its configuration, from its log."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "no log"
    return " ".join(line.strip() for line in lines[-3:])[-400:] or "no log"


async def _one(options: Options, label: str, rate: int, count: int) -> dict[str, Any]:
    work = options.workdir / label
    work.mkdir(parents=True, exist_ok=True)
    async with SandboxProcess(work) as sandbox:
        daemon = Daemon(
            work, _CONFIG.format(base_url=sandbox.url, rate=rate), uvloop=options.uvloop
        )
        try:
            await daemon.start()
        except DaemonFailed as exc:
            return {"configured_rate": rate, "skipped": f"{exc}: {_config_error(daemon.log_path)}"}
        figures: dict[str, Any] = {"configured_rate": rate, "rows": count}
        try:
            run = uuid.uuid4().hex[:8]
            cpu_before = daemon.sample().cpu_s
            started = time.monotonic()
            figures["enqueue_s"] = round(
                await enqueue_due(f"sqlite:///{daemon.sqlite_path}", run, count), 2
            )
            drained = await wait_drained(
                DbRef(sqlite_path=daemon.sqlite_path),
                run,
                count,
                timeout=count / min(rate or 500, 500) + 120,
            )
            figures["drain_s"] = round(time.monotonic() - started, 2)
            cpu = daemon.sample().cpu_s - cpu_before
            figures.update(drained)
            figures["daemon_cpu_s"] = round(cpu, 2)
            figures["cpu_s_per_1000_sends"] = (
                round(cpu / (drained["sent"] / 1000), 3) if drained["sent"] else None
            )
            figures["peak_rss_mb"] = daemon.sample().peak_rss_mb
        finally:
            figures["exit_code"] = await daemon.stop()
        figures["sandbox"] = await sandbox.receipt_figures()
    figures["rate_per_s"] = figures["sandbox"]["receive_rate_per_s"]
    return figures


async def run(options: Options) -> dict[str, Any]:
    """Run the scenario and return its figures."""
    runs = (
        ("rate80", 80, options.pick(10_000, 400)),
        ("rate1000", 1000, options.pick(10_000, 3_000)),
        ("unthrottled", UNTHROTTLED_RATE, options.pick(10_000, 3_000)),
    )
    figures: dict[str, Any] = {"scenario": "relay", "database": "sqlite"}
    for label, rate, count in runs:
        progress(f"relay: {label}, {count} rows")
        figures[label] = await _one(options, label, rate, count)
    r1000 = figures["rate1000"].get("rate_per_s") or 0
    free = figures["unthrottled"].get("rate_per_s") or 0
    figures["targets_met"] = {
        "rate1000_within_2pct": abs(r1000 - TARGET_THROTTLED) <= TARGET_THROTTLED * TOLERANCE,
        "unthrottled>=2000": free >= TARGET_UNTHROTTLED,
        "no_duplicate_sends": all(
            figures[label].get("sandbox", {}).get("duplicate_sends", 0) == 0 for label, _, _ in runs
        ),
        "rss<150MB": all(figures[label].get("peak_rss_mb", 0) < 150 for label, _, _ in runs),
    }
    return figures
