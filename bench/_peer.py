"""Start and stop the hl7apy peer server (:mod:`bench._hl7apy_peer`) as its own process."""

from __future__ import annotations

__all__ = ["PeerServer"]

import asyncio
import contextlib
import sys
from pathlib import Path
from types import TracebackType
from typing import Self

from bench._net import free_port
from bench._proc import ProcSample, sample


class PeerServer:
    """The peer process, as an async context manager.

    Args:
        db_path: its SQLite file.
    """

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.port = free_port()
        self._process: asyncio.subprocess.Process | None = None
        self.last_sample = ProcSample(0.0, 0.0)

    async def __aenter__(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._hl7apy_peer",
            str(self.port),
            str(self.db_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError("hl7apy peer did not start")
        return self

    def sample(self) -> ProcSample:
        """CPU seconds and peak RSS of the peer so far."""
        if self._process is not None and self._process.returncode is None:
            self.last_sample = sample(self._process.pid)
        return self.last_sample

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is None:
            return
        self.sample()
        with contextlib.suppress(ProcessLookupError):
            self._process.terminate()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()
