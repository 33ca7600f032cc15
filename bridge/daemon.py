"""``bridge run``: the long-running daemon, its signals and its periodic jobs.

SIGTERM, SIGINT and SIGHUP stop it gracefully within seconds: the HTTP server stops accepting,
the relay finishes its batch and hands back rows it had not sent, connectors close their
listeners, the inbox writer commits what it holds, then the process exits 0 (⟵ dramatiq
``cli.py``). Periodic work (lease reaping, retention purge, connector polling) runs on APScheduler;
the relay runs its own loop because it must drain a backlog at 1,000 messages/s, not tick.
"""

from __future__ import annotations

__all__ = ["HttpServer", "bind_socket", "embedded_sandbox", "serve"]

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from structlog.typing import FilteringBoundLogger

from bridge.bootstrap import Bridge, bootstrap
from bridge.config import Settings
from bridge.errors import ListenerUnavailable
from bridge.sandbox import SANDBOX_TOKEN, SandboxConfig, SandboxServer
from bridge.systemd import Notifier

#: Seconds the HTTP server gets to finish in-flight requests on shutdown.
_HTTP_GRACE = 3.0


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns signals.

    uvicorn re-raises a captured SIGTERM after it shuts down, which would end the process with
    -15 instead of our clean exit code 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Leave signal handling to the daemon."""
        yield


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening TCP socket ourselves, so a busy port is our clear error, not a sys.exit.

    Raises:
        ListenerUnavailable: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # inherited by accepted connections: without it a keep-alive reply can wait ~40 ms for
    # the client's delayed ACK (Nagle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenerUnavailable("HTTP", f"{host}:{port}", exc.strerror or str(exc)) from exc
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def embedded_sandbox(bridge: Bridge, http_port: int) -> SandboxConfig | None:
    """The sandbox to start with the daemon: only when enabled and the WhatsApp channel points
    at its loopback address, with the channel's own ids and secrets and our webhook URL."""
    settings = bridge.settings
    channel = bridge.channels.get("whatsapp")
    if not settings.sandbox.enabled or channel is None:
        return None
    wa = getattr(channel, "settings", None)
    base = urlsplit(str(getattr(wa, "base_url", "")))
    if base.hostname not in ("127.0.0.1", "localhost", "::1") or (
            base.port != settings.sandbox.port):
        return None
    app_secret = getattr(channel, "app_secret", None) or b""
    return SandboxConfig(
        host=settings.sandbox.host, port=settings.sandbox.port,
        phone_number_id=str(getattr(wa, "phone_number_id", "")),
        waba_id=str(getattr(wa, "waba_id", "")),
        token=settings.secrets.get("BRIDGE_WHATSAPP_TOKEN", SANDBOX_TOKEN),
        app_secret=app_secret.decode() if isinstance(app_secret, bytes) else str(app_secret),
        webhook_url=f"http://127.0.0.1:{http_port}/webhooks/whatsapp",
    )


def _schedule_jobs(bridge: Bridge, scheduler: AsyncIOScheduler) -> None:
    settings = bridge.settings
    scheduler.add_job(bridge.reap, "interval", seconds=max(5.0, settings.relay.lease_seconds / 2),
                      id="reap-leases", max_instances=1, coalesce=True)
    scheduler.add_job(bridge.purge, "interval", hours=settings.retention.purge_interval_hours,
                      id="retention-purge", max_instances=1, coalesce=True)
    for name, connector in bridge.connectors.items():
        poll = getattr(connector, "poll_once", None)
        interval = getattr(connector, "poll_interval_seconds", None)
        if callable(poll) and interval:
            scheduler.add_job(poll, "interval", seconds=float(interval), id=f"poll-{name}",
                              max_instances=1, coalesce=True)


async def serve(
    settings: Settings,
    log: FilteringBoundLogger,
    *,
    ready: Any = None,
    notifier: Notifier | None = None,
) -> int:
    """Run the daemon until a stop signal; returns the process exit code (0).

    Args:
        settings: validated settings.
        log: the root logger.
        ready: optional callable invoked with the Bridge once it serves (tests).
        notifier: tells systemd READY=1 once serving and STOPPING=1 on the way out.

    Raises:
        ConfigError, PluginError, StoreUnavailable, ListenerUnavailable: start-up failed.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with AsyncExitStack() as stack:
            sock = bind_socket(settings.http.host, settings.http.port)
            stack.callback(sock.close)
            bridge = await bootstrap(settings, stack, log)
            port = sock.getsockname()[1]
            sandbox_config = embedded_sandbox(bridge, port)
            if sandbox_config is not None:
                sandbox = SandboxServer(sandbox_config)
                try:
                    await sandbox.start()
                except OSError as exc:
                    raise ListenerUnavailable("sandbox", f"{sandbox_config.host}:"
                                              f"{sandbox_config.port}",
                                              exc.strerror or str(exc)) from exc
                stack.push_async_callback(sandbox.stop)
                log.info("sandbox.started", url=sandbox.url)
            config = uvicorn.Config(bridge.asgi_app(), log_config=None, access_log=False,
                                    lifespan="off", server_header=False, timeout_keep_alive=30,
                                    timeout_graceful_shutdown=int(_HTTP_GRACE))
            server = HttpServer(config)
            server_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
            relay_task = asyncio.create_task(bridge.relay.run(stop), name="relay")
            events_task = asyncio.create_task(bridge.processor.run(stop), name="events")
            scheduler = AsyncIOScheduler()
            _schedule_jobs(bridge, scheduler)
            scheduler.start()
            stack.callback(scheduler.shutdown, wait=False)
            for warning in bridge.exposure_warnings():
                log.warning("door.exposed", detail=warning)
            log.info("bridge.ready", http=f"{settings.http.host}:{port}",
                     connectors=sorted(bridge.connectors), channel=settings.channel,
                     database=bridge.db.dialect)
            if ready is not None:
                ready(bridge)
            if notifier is not None:
                notifier.notify("READY=1")
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({stopper, server_task}, return_when=asyncio.FIRST_COMPLETED)
            log.info("bridge.stopping")
            if notifier is not None:
                notifier.notify("STOPPING=1")
            stop.set()
            server.should_exit = True
            await asyncio.gather(relay_task, events_task)
            released = await bridge.relay_release_all()
            log.info("relay.released", rows=released)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server_task, _HTTP_GRACE + 1)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("bridge.stopped")
    return 0
