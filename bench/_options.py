"""What every scenario is given: the run options, a scratch directory and a progress printer."""

from __future__ import annotations

__all__ = ["Options", "progress"]

import sys
import time
from dataclasses import dataclass
from pathlib import Path

_STARTED = time.monotonic()


@dataclass(frozen=True, kw_only=True)
class Options:
    """Options of one ``python -m bench`` invocation.

    Attributes:
        quick: smaller counts, so the whole suite fits in a few minutes.
        pg: hl7-ingest on PostgreSQL instead of SQLite.
        pg_url: the PostgreSQL server (a fresh database is created and dropped on it).
        workdir: scratch directory for this scenario (databases, configs, logs).
        uvloop: run daemons as operators do (uvloop); False is the asyncio-loop diagnostic.
    """

    quick: bool
    pg: bool
    pg_url: str
    workdir: Path
    uvloop: bool = True

    def pick(self, full: int, quick: int) -> int:
        """``quick`` under ``--quick``, else ``full``."""
        return quick if self.quick else full


def progress(message: str) -> None:
    """One human line on stderr, stamped with seconds since start (stdout is for figures)."""
    sys.stderr.write(f"[bench {time.monotonic() - _STARTED:6.1f}s] {message}\n")
    sys.stderr.flush()
