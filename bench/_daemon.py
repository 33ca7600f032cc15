"""Run ``bridge run`` as an operator would: a subprocess with a TOML and BRIDGE_* variables.

The daemon's logs go to a file in its work directory (a pipe nobody reads would fill and stall
it); readiness is ``GET /readyz`` = 200; shutdown is SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

__all__ = ["Daemon", "DaemonFailed", "bridge_executable"]

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from bench._net import free_port, http_get
from bench._proc import ProcSample, sample


class DaemonFailed(RuntimeError):
    """The daemon exited or never became ready; the message names its log file."""


def bridge_executable(*, uvloop: bool = True) -> list[str]:
    """The ``bridge`` console script next to this interpreter.

    Args:
        uvloop: False runs the same CLI with uvloop made unimportable, so the daemon falls back
            to asyncio's own loop (a diagnostic, for when something breaks only under uvloop).
    """
    if not uvloop:
        return [
            sys.executable,
            "-c",
            "import sys; sys.modules['uvloop'] = None; from bridge.cli import main; main()",
        ]
    script = Path(sys.executable).with_name("bridge")
    if script.exists():
        return [str(script)]
    found = shutil.which("bridge")
    if found:
        return [found]
    return [sys.executable, "-c", "from bridge.cli import main; main()"]


class Daemon:
    """One ``bridge run`` process.

    Args:
        workdir: holds the TOML, the log and (for SQLite) the data directory.
        config: the TOML text.
        name: a label for logs and file names.
        database_url: ``BRIDGE_DATABASE_URL``; SQLite under ``workdir/data`` when None.
        mllp_port: ``BRIDGE_MLLP_PORT`` when the hl7v2 connector is on.
        env: extra environment (secrets such as ``BRIDGE_WHATSAPP_APP_SECRET``).
        uvloop: False for the asyncio-loop diagnostic (see :func:`bridge_executable`).
    """

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        name: str = "bridge",
        database_url: str | None = None,
        mllp_port: int | None = None,
        env: Mapping[str, str] | None = None,
        uvloop: bool = True,
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.http_port = free_port()
        self.mllp_port = mllp_port
        self.data_dir = workdir / "data"
        self.log_path = workdir / f"{name}.log"
        self._config_path = workdir / f"{name}.toml"
        workdir.mkdir(parents=True, exist_ok=True)
        self._config_path.write_text(config, encoding="utf-8")
        base = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        base.update(
            {
                "BRIDGE_DATA_DIR": str(self.data_dir),
                "BRIDGE_HTTP_PORT": str(self.http_port),
                "BRIDGE_LOG_FORMAT": "json",
            }
        )
        if database_url:
            base["BRIDGE_DATABASE_URL"] = database_url
        if mllp_port is not None:
            base["BRIDGE_MLLP_PORT"] = str(mllp_port)
        base.update(env or {})
        self._env = base
        self._command = bridge_executable(uvloop=uvloop)
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.last_sample = ProcSample(0.0, 0.0)

    @property
    def sqlite_path(self) -> Path:
        """Where the embedded SQLite database lives (when no database URL is set)."""
        return self.data_dir / "bridge.db"

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        if self._process is None:
            raise DaemonFailed(f"{self.name} not started")
        return self._process.pid

    async def start(self, *, timeout: float = 60.0) -> None:
        """Start the process and wait for ``/readyz`` = 200.

        Raises:
            DaemonFailed: it exited or was not ready within ``timeout`` seconds.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self._process = await asyncio.create_subprocess_exec(
            *self._command,
            "run",
            "--config",
            str(self._config_path),
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise DaemonFailed(
                    f"{self.name} exited {self._process.returncode} during start-up; "
                    f"see {self.log_path}"
                )
            status, _ = await http_get(self.http_port, "/readyz", timeout=2.0)
            if status == 200:
                return
            await asyncio.sleep(0.1)
        await self.stop()
        raise DaemonFailed(f"{self.name} not ready within {timeout:.0f} s; see {self.log_path}")

    def sample(self) -> ProcSample:
        """CPU seconds so far and peak RSS; remembered for after the process has gone."""
        if self._process is not None and self._process.returncode is None:
            self.last_sample = sample(self._process.pid)
        return self.last_sample

    async def stop(self, *, grace: float = 20.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL. Returns the exit code."""
        process = self._process
        if process is None:
            return None
        if process.returncode is None:
            self.sample()
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return process.returncode
