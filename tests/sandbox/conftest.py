"""Fixtures for the sandbox tests: an in-process client and a webhook receiver on loopback.

The receiver plays the bridge's ``/webhooks/whatsapp``: it checks ``X-Hub-Signature-256`` over the
raw bytes it got (never re-serialised JSON) and records every body, so tests can assert what the
bridge would have received.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.sandbox import SANDBOX_APP_SECRET, SANDBOX_TOKEN, SandboxConfig, create_app

PATIENT = "+573001230001"
OTHER_PATIENT = "+573001230002"
AUTH = {"Authorization": f"Bearer {SANDBOX_TOKEN}"}


@dataclass
class Received:
    """One webhook POST as the receiver saw it."""

    raw: bytes
    signature: str | None
    signature_ok: bool
    body: dict[str, Any]


@dataclass
class Receiver:
    """A fake bridge webhook endpoint on 127.0.0.1:0."""

    app_secret: str = SANDBOX_APP_SECRET
    #: HTTP statuses to answer, in order; 200 once the list is used up.
    script: list[int] = field(default_factory=list)
    posts: list[Received] = field(default_factory=list)
    attempts: int = 0
    url: str = ""

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        self.attempts += 1
        if self.script:
            return Response("try later", status_code=self.script.pop(0))
        signature = request.headers.get("x-hub-signature-256")
        expected = "sha256=" + hmac.new(self.app_secret.encode(), raw, hashlib.sha256).hexdigest()
        ok = signature is not None and hmac.compare_digest(signature, expected)
        self.posts.append(Received(raw, signature, ok, json.loads(raw)))
        return Response("OK" if ok else "bad signature", status_code=200 if ok else 401)

    def statuses(self) -> list[dict[str, Any]]:
        """Every ``statuses[]`` item received, in arrival order."""
        return [
            s
            for p in self.posts
            for e in p.body["entry"]
            for c in e["changes"]
            for s in c["value"].get("statuses", [])
        ]

    def messages(self) -> list[dict[str, Any]]:
        """Every inbound ``messages[]`` item received, in arrival order."""
        return [
            m
            for p in self.posts
            for e in p.body["entry"]
            for c in e["changes"]
            for m in c["value"].get("messages", [])
        ]

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Poll until ``predicate()`` holds, failing the test after ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate():
            if loop.time() > deadline:
                pytest.fail("timed out waiting for webhooks")
            await asyncio.sleep(0.01)


@pytest.fixture(name="receiver")
async def _receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = Starlette(routes=[Route("/webhooks/whatsapp", receiver.handle, methods=["POST"])])
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _QuietServer(uvicorn.Config(app, log_level="warning", access_log=False))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(5):
        while not server.started:
            await asyncio.sleep(0.01)
    receiver.url = f"http://127.0.0.1:{port}/webhooks/whatsapp"
    yield receiver
    server.should_exit = True
    async with asyncio.timeout(5):
        await task
    sock.close()


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers, so pytest keeps Ctrl+C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@pytest.fixture(name="make_client")
async def _make_client() -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """Build an in-process client (httpx.ASGITransport) for a sandbox with the given settings."""
    made: list[tuple[httpx.AsyncClient, Any]] = []

    def make(**overrides: Any) -> httpx.AsyncClient:
        overrides.setdefault("seed", 7)
        app = create_app(SandboxConfig(**overrides))
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test", headers=AUTH
        )
        client.sandbox = app.state.sandbox  # type: ignore[attr-defined]
        made.append((client, app.state.sandbox))
        return client

    yield make
    for client, sandbox in made:
        await client.aclose()
        await sandbox.aclose()


@pytest.fixture(name="client")
def _client(make_client: Callable[..., httpx.AsyncClient]) -> httpx.AsyncClient:
    return make_client()


def template_body(
    name: str = "appointment_reminder",
    language: str = "es",
    *,
    to: str = PATIENT,
    body_params: list[str] | None = None,
    payloads: dict[int, str] | None = None,
    extra_components: list[dict[str, Any]] | None = None,
    callback: str | None = None,
) -> dict[str, Any]:
    """A template send body as the bridge builds it."""
    if body_params is None:
        body_params = ["Ana", "12 de marzo", "10:30", "Sede Norte"]
    components: list[dict[str, Any]] = [
        {"type": "body", "parameters": [{"type": "text", "text": p} for p in body_params]}
    ]
    for index, payload in (payloads or {}).items():
        components.append(
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": str(index),
                "parameters": [{"type": "payload", "payload": payload}],
            }
        )
    components.extend(extra_components or [])
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": {"name": name, "language": {"code": language}, "components": components},
    }
    if callback is not None:
        body["biz_opaque_callback_data"] = callback
    return body


@pytest.fixture(name="template_body")
def _template_body() -> Callable[..., dict[str, Any]]:
    return template_body
