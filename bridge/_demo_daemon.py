"""The real daemon for ``bridge demo``: a ``bridge run`` subprocess on a throw-away data dir.

The demo runs the daemon exactly as an operator would (its own process, its own event loop, its
JSON logs in ``<data dir>/bridge.log``), so what the demo shows is what ``bridge run`` does. Only
the configuration is the demo's: SQLite in the data dir, the embedded WhatsApp sandbox, the
HL7 v2 connector writing decisions back to the simulated HIS, and time compressed with the
engine's own settings (no clock is patched):

- ``reminder_offsets_hours = [72.0]``: every demo appointment is tomorrow, inside 72 h, so its
  reminder is already due when it is booked and goes out at once (the engine's catch-up rule
  for late bookings);
- quiet hours off, no jitter, no minimum lead, 0.5 s between two messages to one patient (Meta
  asks 6 s) and a 0.1 s relay tick.

The child never sees the operator's ``BRIDGE_*`` variables: a demo must not touch a production
database named by ``BRIDGE_DATABASE_URL``.
"""

from __future__ import annotations

__all__ = [
    "DEMO_TIMEZONE",
    "DemoDaemon",
    "DemoPorts",
    "child_environment",
    "demo_config",
    "free_port",
]

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

#: Seconds the daemon gets to come up (migrations included) before the demo gives up.
_READY_LIMIT = 20.0
#: Seconds the daemon gets to stop after SIGTERM before it is killed.
_STOP_LIMIT = 15.0
#: The clinic's time zone in the demo (the SIU times are written without an offset).
DEMO_TIMEZONE = "America/Bogota"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bound to port 0, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoPorts:
    """The loopback ports of one demo run."""

    http: int
    sandbox: int
    mllp: int
    his: int

    @classmethod
    def pick(cls, his: int) -> DemoPorts:
        """Free ports for the daemon's listeners; ``his`` is already listening."""
        chosen: set[int] = {his}
        ports: list[int] = []
        while len(ports) < 3:
            port = free_port()
            if port not in chosen:
                chosen.add(port)
                ports.append(port)
        return cls(http=ports[0], sandbox=ports[1], mllp=ports[2], his=his)


def demo_config(data_dir: Path, ports: DemoPorts) -> str:
    """The demo's ``bridge.toml``: SQLite, sandbox, HL7 v2 both ways, time compressed.

    Args:
        data_dir: where the database and log live.
        ports: the listeners' ports.

    Returns:
        TOML text.
    """
    # json.dumps-style quoting is TOML-compatible for a path string
    data = str(data_dir).replace("\\", "\\\\").replace('"', '\\"')
    return f"""# Written by `bridge demo`: everything on this machine, time compressed.
[bridge]
data_dir = "{data}"
timezone = "{DEMO_TIMEZONE}"
connectors = ["hl7v2"]
channel = "whatsapp"

[http]
host = "127.0.0.1"
port = {ports.http}

[log]
format = "json"
level = "info"

[relay]
tick_seconds = 0.1
backoff_base_seconds = 1.0

[engine]
reminder_offsets_hours = [72.0]
quiet_hours_start = "00:00"
quiet_hours_end = "00:00"
min_lead_minutes = 0
jitter_minutes = 0

[sandbox]
enabled = true
host = "127.0.0.1"
port = {ports.sandbox}

[whatsapp]
base_url = "http://127.0.0.1:{ports.sandbox}"
patient_spacing_seconds = 0.5

[connectors.hl7v2]
host = "127.0.0.1"
port = {ports.mllp}
timezone = "{DEMO_TIMEZONE}"
phone_region = "CO"

[connectors.hl7v2.outbound]
host = "127.0.0.1"
port = {ports.his}
ack_timeout_seconds = 5.0
"""


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The daemon's environment: the demo's own, minus every ``BRIDGE_*`` setting and secret.

    A ``BRIDGE_DATABASE_URL`` or ``BRIDGE_DATA_DIR`` left in an operator's shell must never
    point the demo at real data, and real WhatsApp secrets must never reach the sandbox.
    """
    env = {k: v for k, v in environ.items() if not k.startswith("BRIDGE_")}
    env["BRIDGE_LOG_FORMAT"] = "json"
    return env


class DemoDaemon:
    """``bridge run --config <data dir>/bridge.toml`` as a child process.

    Args:
        data_dir: the demo's data dir (config, database and log go there).
        ports: the listeners' ports.
    """

    def __init__(self, data_dir: Path, ports: DemoPorts) -> None:
        self.data_dir = data_dir
        self.ports = ports
        self.config_path = data_dir / "bridge.toml"
        self.log_path = data_dir / "bridge.log"
        self.url = f"http://127.0.0.1:{ports.http}"
        self.sandbox_url = f"http://127.0.0.1:{ports.sandbox}"
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    @property
    def database_url(self) -> str:
        """The SQLite URL of the demo database."""
        return f"sqlite:///{self.data_dir / 'bridge.db'}"

    async def start(self) -> None:
        """Write the config and start the daemon (not yet ready: see :meth:`wait_ready`)."""
        self.config_path.write_text(demo_config(self.data_dir, self.ports), encoding="utf-8")
        env = child_environment(os.environ)
        self._log = self.log_path.open("ab")
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from bridge.cli import main; main()",
            "run",
            "--config",
            str(self.config_path),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )

    async def wait_ready(self, client: httpx.AsyncClient) -> int | None:
        """Wait until ``/readyz`` answers 200.

        Returns:
            None when ready; the exit code when the daemon ended first (a port taken: 3).

        Raises:
            TimeoutError: not ready within the limit.
        """
        if self._process is None:
            raise RuntimeError("the daemon is not started")
        deadline = time.monotonic() + _READY_LIMIT
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                return self._process.returncode
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.url}/readyz", timeout=1.0)).status_code == 200:
                    return None
            await asyncio.sleep(0.1)
        raise TimeoutError("the bridge was not ready in time")

    async def stop(self) -> int | None:
        """SIGTERM, then wait for the graceful exit (SIGKILL after the limit).

        Returns:
            The exit code (0 after a clean stop), or None when it was never started.
        """
        process, self._process = self._process, None
        try:
            if process is None:
                return None
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), _STOP_LIMIT)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            return process.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self, lines: int = 5) -> list[str]:
        """The daemon's last log lines (JSON, ids only: the daemon masks PHI)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]
