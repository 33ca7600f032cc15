"""Machinery of the fault suite: real daemons that can be killed and restarted, a sandbox that
outlives them, a listening HIS that counts writes, a pausable TCP proxy and an MLLP client.

Everything runs on 127.0.0.1 with real sockets. The daemon's stderr goes to a file (a pipe
nobody reads would fill up and freeze the daemon under a long run) and is scanned for synthetic
PHI when the test is done, like ``tests/e2e/daemon.py`` does for its daemons.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self, TypeVar

import httpx

from tests.e2e.daemon import bridge_command, free_port

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
T = TypeVar("T")


def run_seed(what: str) -> int:
    """The seed of this run's random choices: ``FAULTS_SEED`` if set, else a fresh one; printed
    so a failing run can be repeated with ``FAULTS_SEED=<n>``."""
    seed = int(os.environ.get("FAULTS_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"{what} seed: {seed} (FAULTS_SEED={seed} repeats this run)")
    return seed


def phone(index: int) -> str:
    """A fictional Colombian mobile number, one per simulated patient."""
    return f"+57300123{index % 10000:04d}"


def siu(control: str, appointment: str, start: datetime, to: str) -> bytes:
    """An MLLP-framed SIU^S12 booking ``appointment`` at ``start`` for the patient at ``to``."""
    ts = start.strftime("%Y%m%d%H%M%S")
    end = (start + timedelta(minutes=30)).strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|TESTHIS|CLINIC|BRIDGE|CLINIC|20261122080000||SIU^S12^SIU_S12|{control}|P|2.5",
        (
            f"SCH|{appointment}^HIS|{appointment}^HIS|||||ROUTINE||30|MIN|^^30^{ts}^{end}"
            "|||||||||||||Booked"
        ),
        f"TQ1|1||||||{ts}|{end}",
        f"PID|1||MRN{appointment}^^^HIS^MR||PRUEBA^ANA||19800101|F|||||^PRN^CP^^^^^^^^^{to}|||es",
        "RGS|1|A",
        f"AIL|1|A|SEDE^^^CLINIC^^^^^Sede Norte|||{ts}|||30|MIN",
    ]
    return VT + "\r".join(segments).encode() + CR + FS + CR


def ack_code(ack: str | None) -> str | None:
    """The MSA-1 code of an ACK text (``AA``, ``AE``, ``AR``...), or None.

    An ACK uses the field separator of the message it answers (MSH-1), which need not be ``|``.
    """
    if not ack:
        return None
    sep = re.escape(ack[3]) if ack.startswith("MSH") and len(ack) > 3 else r"\|"
    match = re.search(rf"(?:^|\r)MSA{sep}([A-Z]{{2}})", ack)
    return match.group(1) if match else None


def wait_for(
    predicate: Callable[[], T], timeout: float = 30.0, what: str = "condition", every: float = 0.2
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def sqlite_rows(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one read-only query on the daemon's SQLite file (WAL: safe while it runs)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


class MllpClient:
    """One HIS-side MLLP connection: send a frame, read one ACK, reconnect after a failure."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self._sock is None:
            self._sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        return self._sock

    def close(self) -> None:
        """Drop the connection (the next send opens a new one)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def send(self, frame: bytes) -> str | None:
        """Send ``frame`` and return the ACK text; None when the peer closed or went silent."""
        try:
            sock = self._connect()
            sock.sendall(frame)
            reply = b""
            while not reply.endswith(FS + CR):
                chunk = sock.recv(65536)
                if not chunk:
                    self.close()
                    return None
                reply += chunk
        except OSError:
            self.close()
            return None
        return reply.strip(VT + FS + CR).decode("utf-8", "replace")


class FakeHis:
    """A listening HIS: answers AA to every message and counts SRM^S03 per appointment.

    Like HIS interfaces that identify duplicates by (sending application, MSH-10) (reference
    hl7v2.md, HermeTech UltraPort), a message resent under the same control id is one write;
    a new control id is a new write. ``hold`` keeps the ACK of SRMs back while it is set, so a
    test can kill the daemon after the HIS applied a decision and before the daemon heard so.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.port = free_port()
        self.hold = threading.Event()
        self.held = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.hold.clear()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(server.wait_closed())

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                frame = await reader.readuntil(FS + CR)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                break
            text = frame.strip(VT + FS + CR).decode()
            self.messages.append(text)
            if "SRM^" in text and self.hold.is_set():
                self.held.set()  # applied on our side; the daemon has not heard it yet
                while self.hold.is_set():
                    await asyncio.sleep(0.05)
            control = text.split("\r")[0].split("|")[9]
            ack = f"MSH|^~\\&|HIS||BRIDGE||20260101000000||ACK|A{control}|P|2.5\rMSA|AA|{control}"
            writer.write(VT + ack.encode() + FS + CR)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        writer.close()

    def _srm(self) -> Iterator[tuple[str, str]]:
        for text in list(self.messages):
            if "SRM^S03" not in text:
                continue
            control = text.split("\r")[0].split("|")[9]
            arq = next((s for s in text.split("\r") if s.startswith("ARQ|")), "ARQ|?")
            yield arq.split("|")[1].split("^")[0], control

    def confirmations(self) -> Counter[str]:
        """Confirm writes per appointment id (ARQ-1.1): distinct SRM^S03 control ids."""
        return Counter(appointment for appointment, _ in set(self._srm()))

    def deliveries(self) -> Counter[str]:
        """SRM^S03 messages received per appointment id, resends under one control id included."""
        return Counter(appointment for appointment, _ in self._srm())


@dataclass
class LoggedProcess:
    """A subprocess whose stderr goes to a file in the test's folder."""

    args: list[str]
    log_path: Path
    env: Mapping[str, str]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        """Start (or restart) the process; its log file is appended to."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
        full_env.update(self.env)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, env=full_env, stdout=subprocess.DEVNULL, stderr=log
            )
        self.starts += 1

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a power cut for the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def log_text(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.log_path.read_text("utf-8", "replace") if self.log_path.exists() else ""


@dataclass
class BridgeDaemon(LoggedProcess):
    """``bridge run`` on fixed ports and one data dir, so it can be killed and restarted."""

    http_port: int = 0
    data_dir: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        """The daemon's HTTP base URL."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def sqlite_path(self) -> Path:
        """The SQLite database (when no database URL is set)."""
        return self.data_dir / "bridge.db"

    def ready(self) -> bool:
        """True when /readyz answers 200."""
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait for /readyz 200; fail early with the log tail when the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"daemon exited: {self.log_text()[-2000:]}")
            if self.ready():
                return
            time.sleep(0.1)
        raise AssertionError("daemon not ready in time")


def make_daemon(
    tmp_path: Path,
    config: str,
    *,
    http_port: int | None = None,
    env: Mapping[str, str] | None = None,
) -> BridgeDaemon:
    """A not yet started daemon with ``config`` as its TOML file, its data dir in ``tmp_path``."""
    config_path = tmp_path / "bridge.toml"
    config_path.write_text(config, encoding="utf-8")
    port = http_port or free_port()
    data_dir = tmp_path / "data"
    full_env = {
        "BRIDGE_DATA_DIR": str(data_dir),
        "BRIDGE_HTTP_PORT": str(port),
        "BRIDGE_LOG_FORMAT": "json",
        **(env or {}),
    }
    return BridgeDaemon(
        args=bridge_command("run", "--config", str(config_path)),
        log_path=tmp_path / "daemon.log",
        env=full_env,
        http_port=port,
        data_dir=data_dir,
    )


@contextlib.contextmanager
def daemon_running(daemon: BridgeDaemon) -> Iterator[BridgeDaemon]:
    """Start ``daemon``, and at the end stop it and check its log carries no synthetic PHI."""
    from tests.conftest import find_phi

    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        leaked = find_phi(daemon.log_text())
        assert not leaked, f"the daemon logged synthetic PHI: {[v[:4] for v in leaked]}"


class SandboxProcess(LoggedProcess):
    """``bridge sandbox serve`` as its own process, so it survives the daemon's deaths."""

    def __init__(self, tmp_path: Path, webhook_url: str, seed: int) -> None:
        self.port = free_port()
        super().__init__(
            args=bridge_command(
                "sandbox",
                "serve",
                "--port",
                str(self.port),
                "--webhook-url",
                webhook_url,
                "--seed",
                str(seed),
            ),
            log_path=tmp_path / "sandbox.log",
            env={},
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self.start()
        wait_for(self._up, 30, "the sandbox to listen")
        return self

    def __exit__(self, *exc: object) -> None:
        from tests.conftest import find_phi

        self.stop()
        leaked = find_phi(self.log_text())
        assert not leaked, f"the sandbox logged synthetic PHI: {[v[:4] for v in leaked]}"

    def _up(self) -> bool:
        if not self.alive():
            raise AssertionError(f"sandbox exited: {self.log_text()[-2000:]}")
        try:
            return httpx.get(f"{self.url}/_sandbox/stats", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def messages(self) -> list[dict[str, Any]]:
        """Every message the sandbox accepted, oldest first."""
        data: list[dict[str, Any]] = httpx.get(f"{self.url}/_sandbox/messages", timeout=30).json()[
            "data"
        ]
        return data

    def reply(self, to: str, *, button: str, context_id: str | None = None) -> int:
        """The patient at ``to`` taps ``button``; returns the control API's HTTP status."""
        body: dict[str, Any] = {"to": to, "button": button}
        if context_id is not None:
            body["context_id"] = context_id
        return httpx.post(f"{self.url}/_sandbox/reply", json=body, timeout=10).status_code

    def set_faults(self, **faults: float) -> dict[str, Any]:
        """Install send faults (``bridge.sandbox.Faults`` fields); returns what is in force."""
        resp = httpx.post(f"{self.url}/_sandbox/faults", json=faults, timeout=10)
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result

    def stats(self) -> dict[str, Any]:
        """The sandbox's counters."""
        result: dict[str, Any] = httpx.get(f"{self.url}/_sandbox/stats", timeout=10).json()
        return result


def bridge_config(
    *,
    mllp_port: int,
    his_port: int,
    whatsapp_url: str,
    sandbox_enabled: bool,
    sandbox_port: int = 8081,
    relay: str = "",
    extra: str = "",
) -> str:
    """A daemon configuration: HL7 in and out, reminders due at once, no quiet hours."""
    return f"""
[bridge]
timezone = "America/Bogota"
connectors = ["hl7v2"]
[engine]
jitter_minutes = 0
quiet_hours_start = "00:00"
quiet_hours_end = "00:00"
[relay]
{relay}
[sandbox]
enabled = {"true" if sandbox_enabled else "false"}
port = {sandbox_port}
[whatsapp]
base_url = "{whatsapp_url}"
[connectors.hl7v2]
port = {mllp_port}
timezone = "America/Bogota"
phone_region = "CO"
[connectors.hl7v2.outbound]
host = "127.0.0.1"
port = {his_port}
{extra}
"""


class TcpProxy:
    """A TCP forwarder from a local port to ``target``; ``cut()`` makes the target unreachable.

    While cut, the listening port is closed (new connections are refused) and every open
    connection is reset, which is what a crashed database host or a pulled cable looks like.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __enter__(self) -> Self:
        self._thread.start()
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(15)

    def cut(self) -> None:
        """Refuse new connections and reset every open one."""
        self._call(self._cut())

    def restore(self) -> None:
        """Listen again on the same port."""
        self._call(self._listen())

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            transport = writer.transport
            with contextlib.suppress(OSError):
                sock = transport.get_extra_info("socket")
                if sock is not None:  # RST rather than FIN: the peer sees a dead host
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
            transport.abort()
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while chunk := await src.read(65536):
                    dst.write(chunk)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
