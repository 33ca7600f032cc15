"""A fake Graph API of our own (the outside system), served in-process or on loopback.

``FakeGraph`` is a raw ASGI app: it records every request (method, path, query, JSON body,
headers) and answers from a script of responses, then with a default success. Tests assert the
exact requests and that every scripted response was used (STYLE.md §8, courier
``ExpectedRequests``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import pytest
import uvicorn

TOKEN = "test-token"


@dataclass
class Scripted:
    """One scripted answer."""

    status: int = 200
    body: Any = None  # dict/list → JSON, bytes → raw
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class FakeGraph:
    """Scripted Graph API; unscripted POSTs to /messages succeed with a fresh wamid."""

    def __init__(self) -> None:
        self.script: list[Scripted] = []
        self.requests: list[Seen] = []
        self._ids = itertools.count(1)

    def respond(
        self,
        status: int = 200,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> None:
        """Script the next answer(s); ``body`` None means the default success body."""
        for _ in range(times):
            self.script.append(Scripted(status, body, dict(headers or {}), delay))

    def unused(self) -> list[Scripted]:
        return list(self.script)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(
            Seen(
                method=scope["method"],
                path=scope["path"],
                query=parse_qs(scope["query_string"].decode()),
                headers=headers,
                body=body,
            )
        )
        answer = self.script.pop(0) if self.script else None
        if answer is not None and answer.body is None:
            default = self._default(scope["method"], headers, body)
            answer = Scripted(answer.status, default.body, answer.headers, answer.delay)
        if answer is None:
            answer = self._default(scope["method"], headers, body)
        if answer.delay:
            await asyncio.sleep(answer.delay)
        raw = answer.body if isinstance(answer.body, bytes) else json.dumps(answer.body).encode()
        response_headers = [(b"content-type", b"application/json")]
        response_headers += [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        await send(
            {"type": "http.response.start", "status": answer.status, "headers": response_headers}
        )
        await send({"type": "http.response.body", "body": raw})

    def _default(self, method: str, headers: dict[str, str], body: bytes) -> Scripted:
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return Scripted(401, {"error": {"code": 190, "message": "bad token"}})
        data = json.loads(body or b"{}") if method == "POST" else {}
        if data.get("status") == "read":
            return Scripted(200, {"success": True})
        n = next(self._ids)
        to = data.get("to", "")
        return Scripted(
            200,
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                "messages": [{"id": f"wamid.fake{n}", "message_status": "accepted"}],
            },
        )


@dataclass
class Served:
    url: str
    app: Any


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1:0 in this loop; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


@pytest.fixture(name="fake_graph")
def _fake_graph() -> FakeGraph:
    return FakeGraph()


@pytest.fixture(name="graph_url")
async def _graph_url(fake_graph: FakeGraph) -> AsyncIterator[str]:
    async with serve(fake_graph) as url:
        yield url
