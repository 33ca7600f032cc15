"""The daemon's HTTP app: health, readiness, metrics, and the routes plugins contribute.

Starlette rather than FastAPI: every endpoint here reads raw bytes (signatures are checked over
the exact body) and answers small fixed shapes, so FastAPI's validation layer would only cost
time on the webhook path that must take thousands of POSTs per second.

``/healthz`` says the process is alive. ``/readyz`` says it can take traffic: the database
answers, migrations are at head and every connector started; load balancers and systemd
watchdogs should use it. ``/metrics`` is Prometheus text.
"""

from __future__ import annotations

__all__ = ["BodyLimit", "Readiness", "create_app"]

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bridge.metrics import Metrics

#: Async check returning (ok, detail) for /readyz.
ReadinessCheck = Callable[[], Awaitable[tuple[bool, str]]]


@dataclass
class Readiness:
    """Named readiness checks; all must pass for /readyz to answer 200."""

    checks: dict[str, ReadinessCheck] = field(default_factory=dict)

    async def evaluate(self) -> tuple[bool, dict[str, str]]:
        """Run every check; a check that raises counts as failed."""
        results: dict[str, str] = {}
        ok = True
        for name, check in self.checks.items():
            try:
                passed, detail = await check()
            except Exception as exc:  # noqa: BLE001 - a broken check means not ready
                passed, detail = False, type(exc).__name__
            ok = ok and passed
            results[name] = "ok" if passed else f"failing: {detail}"
        return ok, results


class BodyLimit:
    """ASGI middleware answering 413 to request bodies over ``max_bytes`` and 408 to bodies
    that take longer than ``timeout`` seconds to arrive.

    It counts bytes as they arrive, so a client that lies in Content-Length or streams forever is
    cut off too, and nothing larger than the limit is ever buffered; a slow-loris client holds
    one request for at most ``timeout`` seconds and never delays any other connection.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics,
                 timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        # Read the whole body here, bounded in size and time, then replay it: the app never
        # sees a request it would have to abandon half-way (webhooks are signed over every byte).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                await self._refuse(send, slow=True)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, *, slow: bool = False) -> None:
        reason = "body_too_slow" if slow else "body_too_large"
        self.metrics.http_rejected.labels(reason).inc()
        detail: dict[str, object] = (
            {"error": reason, "limit_seconds": self.timeout} if slow
            else {"error": reason, "limit_bytes": self.max_bytes})
        response = JSONResponse(detail, status_code=408 if slow else 413)
        await response(
            {"type": "http", "method": "POST", "headers": []},
            _empty_receive, send,
        )




async def _empty_receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def create_app(
    *,
    metrics: Metrics,
    readiness: Readiness,
    extra_routes: Sequence[BaseRoute] = (),
    refresh_metrics: Callable[[], Awaitable[None]] | None = None,
    max_body_bytes: int = 3 * 1024 * 1024,
    metrics_guard: Callable[[Request], Response | None] | None = None,
    body_timeout: float = 30.0,
) -> ASGIApp:
    """Build the ASGI app.

    Args:
        metrics: the registry to expose.
        readiness: checks behind /readyz.
        extra_routes: routes from the channel and connectors (webhooks, notifications).
        refresh_metrics: called before /metrics renders (gauges read from the database).
        max_body_bytes: request bodies above this get 413.
        metrics_guard: returns a refusal for /metrics requests without the right token.
    """

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> Response:
        ok, results = await readiness.evaluate()
        return JSONResponse({"ready": ok, "checks": results}, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        if metrics_guard is not None and (refusal := metrics_guard(request)) is not None:
            return refusal
        if refresh_metrics is not None:
            try:
                await refresh_metrics()
            except Exception:  # noqa: BLE001 - stale gauges beat a failed scrape
                metrics.http_rejected.labels("metrics_refresh_failed").inc()
        return Response(metrics.render(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")

    async def not_found(request: Request, exc: Exception) -> Response:
        metrics.http_rejected.labels("not_found").inc()
        return JSONResponse({"error": "not_found"}, status_code=404)

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        metrics.http_rejected.labels("method_not_allowed").inc()
        return JSONResponse({"error": "method_not_allowed"}, status_code=405)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        *extra_routes,
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
    return BodyLimit(app, max_body_bytes, metrics, body_timeout)
