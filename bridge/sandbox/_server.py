"""Run the sandbox in-process on uvicorn, for tests and ``bridge demo``.

``uvicorn.Server.serve`` replaces the process's SIGINT/SIGTERM handlers while it runs; an embedded
sandbox must leave them to its host (the daemon, pytest), so :class:`_QuietServer` captures none.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from types import TracebackType
from typing import Self

import uvicorn

from bridge.sandbox._app import create_app
from bridge.sandbox._config import SandboxConfig
from bridge.sandbox._sandbox import Sandbox

__all__ = ["SandboxServer"]

#: Seconds to wait for uvicorn to come up before giving up.
_STARTUP_LIMIT_S = 10.0


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class SandboxServer:
    """The sandbox served over real HTTP, as an async context manager.

    ``port=0`` in the config picks a free port; :attr:`url` tells which::

        async with SandboxServer(SandboxConfig(port=0, webhook_url=hook)) as sandbox:
            client = httpx.AsyncClient(base_url=sandbox.url)

    Args:
        config: The sandbox configuration (``host`` and ``port`` are where it listens).
    """

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.app = create_app(config)
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.url = ""

    @property
    def sandbox(self) -> Sandbox:
        """The sandbox state behind the app (messages, stats, replies)."""
        sandbox: Sandbox = self.app.state.sandbox
        return sandbox

    async def start(self) -> None:
        """Bind, start uvicorn and wait until it accepts connections.

        Raises:
            OSError: The address cannot be bound.
            RuntimeError: uvicorn did not start in time.
        """
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this; without it uvicorn's separate header and body writes
        # meet the client's delayed ACK and every keep-alive request costs ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.config.host, self.config.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._socket = sock
        port = sock.getsockname()[1]
        host = f"[{self.config.host}]" if family == socket.AF_INET6 else self.config.host
        self.url = f"http://{host}:{port}"
        server_config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self._server = _QuietServer(server_config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="sandbox")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _STARTUP_LIMIT_S
        while not self._server.started:
            if self._task.done():
                await self._task  # re-raise the startup error
                raise RuntimeError("sandbox server stopped during startup")
            if loop.time() > deadline:
                await self.stop()
                raise RuntimeError("sandbox server did not start in time")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting, finish in-flight requests (1 s grace) and stop webhook delivery."""
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        # Lifespan shutdown already closed delivery; this covers a failed startup.
        await self.sandbox.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
