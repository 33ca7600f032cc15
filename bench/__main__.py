"""``python -m bench [scenario ...] [--quick] [--pg]``: run benchmarks, one JSON line each.

Figures go to stdout, one JSON object per scenario; progress goes to stderr. A scenario whose
pieces are missing or broken prints ``{"scenario": ..., "skipped": "<reason>"}`` instead of
failing the whole run. Targets and the facts behind them: DESIGN.md §5.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from bench._options import Options, progress

#: scenario name → module under bench.scenarios, in the order ``python -m bench`` runs them
SCENARIOS = {
    "hl7-ingest": "hl7_ingest",
    "webhooks": "webhooks",
    "relay": "relay",
    "scale-out": "scale_out",
}

_DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432"

Scenario = Callable[[Options], Awaitable[dict[str, Any]]]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        metavar="scenario",
        help=f"one or more of {', '.join(SCENARIOS)} (default: all, in that order)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller counts: the whole suite in a few minutes"
    )
    parser.add_argument(
        "--pg",
        action="store_true",
        help="hl7-ingest on PostgreSQL (a fresh database, dropped afterwards)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_PG_URL", _DEFAULT_PG),
        help=f"PostgreSQL server for --pg and scale-out (default {_DEFAULT_PG})",
    )
    parser.add_argument(
        "--no-uvloop",
        action="store_true",
        help="diagnostic: run daemons on asyncio's loop instead of uvloop",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch directory (databases, configs, daemon logs)",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    # each scenario runs once, in the order given
    args.scenarios = list(dict.fromkeys(args.scenarios))
    return args


def _machine() -> dict[str, Any]:
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=False,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    mem_kb = 0
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "commit": commit,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


async def _run_one(name: str, options: Options) -> dict[str, Any]:
    module = importlib.import_module(f"bench.scenarios.{SCENARIOS[name]}")
    scenario: Scenario = module.run
    started = time.monotonic()
    try:
        figures = await scenario(options)
    except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the others
        progress(f"{name}: failed: {type(exc).__name__}: {exc}")
        figures = {"scenario": name, "skipped": f"{type(exc).__name__}: {exc}"[:500]}
    figures["quick"] = options.quick
    if not options.uvloop:
        figures["event_loop"] = "asyncio (diagnostic --no-uvloop)"
    figures["wall_s"] = round(time.monotonic() - started, 1)
    return figures


async def _main(args: argparse.Namespace, root: Path) -> None:
    names = args.scenarios or list(SCENARIOS)
    machine = _machine()
    for name in names:
        progress(f"{name}: start")
        workdir = root / name
        workdir.mkdir()
        options = Options(
            quick=args.quick,
            pg=args.pg,
            pg_url=args.pg_url,
            workdir=workdir,
            uvloop=not args.no_uvloop,
        )
        figures = await _run_one(name, options)
        figures["machine"] = machine
        sys.stdout.write(orjson.dumps(figures).decode() + "\n")
        sys.stdout.flush()
        progress(f"{name}: done in {figures['wall_s']} s")


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m bench``."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    root = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    try:
        asyncio.run(_main(args, root))
    finally:
        if args.keep:
            progress(f"scratch kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
