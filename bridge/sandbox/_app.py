"""The sandbox's HTTP face: Graph API endpoints the bridge uses, plus a control API for tests.

Graph side (Bearer token required; a wrong or missing token answers code 190, HTTP 401):

- ``POST /{version}/{phone_number_id}/messages``: template, text, interactive (button, list,
  cta_url) and the mark-as-read form (reference whatsapp.md §1).
- ``GET /{version}/{waba_id}/message_templates``: ``fields``, ``limit``, ``after``/``before``,
  filters ``name``, ``status``, ``category``, ``language`` (reference §5).

Control side, under ``/_sandbox/`` (no auth, answered to loopback clients only):
``GET messages``, ``POST reply``, ``GET|POST faults``, ``GET|POST scripts``, ``POST reset``,
``GET stats``, ``GET webhooks``, ``POST drain``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict, fields
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bridge.sandbox._config import PatientScript, SandboxConfig
from bridge.sandbox._errors import GraphError, error_envelope, token_error_envelope
from bridge.sandbox._patients import ReplyError
from bridge.sandbox._sandbox import Faults, Sandbox, api_major

__all__ = ["create_app"]

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_DEFAULT_PAGE = 25
_MAX_PAGE = 1000
#: Fields every template object has; ``id`` is always returned, as Graph does.
_TEMPLATE_FIELDS = ("name", "language", "status", "category", "parameter_format", "components")


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class _Reset(Response):
    """Start an answer and drop the connection half-way (a ``reset`` fault).

    uvicorn closes the transport when the app returns before the body is complete, so the
    client sees the peer hang up mid-response.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"512")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"messaging_pro', "more_body": True})


def _graph_error(sandbox: Sandbox, exc: GraphError) -> Response:
    sandbox.count_error(exc.code)
    return _JSON(exc.envelope(), status_code=exc.http_status)


def _authorised(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :] == token
    return request.query_params.get("access_token") == token


def _unauthorised(sandbox: Sandbox) -> Response:
    sandbox.count_error(190)
    return _JSON(token_error_envelope(), status_code=401)


async def _fault_response(sandbox: Sandbox, fault: str) -> Response:
    if fault == "status_429":
        return _JSON(
            error_envelope(130429, "Cloud API message throughput has been reached."),
            status_code=429,
        )
    if fault == "status_5xx":
        status = sandbox.pick_5xx()
        if status == 502:
            # A proxy in front of Graph answers in plain text (reference §2.1, courier's case).
            return PlainTextResponse("Bad Gateway", status_code=502)
        code = 1 if status == 500 else 2
        return _JSON(error_envelope(code, "Please retry your request later."), status_code=status)
    if fault == "timeout":
        await asyncio.sleep(sandbox.faults.timeout_seconds)
        return _JSON(error_envelope(2, "Request timed out."), status_code=504)
    return _Reset()


async def _send(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    if not _authorised(request, sandbox.config.token):
        return _unauthorised(sandbox)
    fault = sandbox.pick_fault()
    if fault is not None:
        return await _fault_response(sandbox, fault)
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _graph_error(sandbox, GraphError(100, "the request body must be a JSON object"))
    try:
        result = sandbox.handle_send(
            request.path_params["version"], request.path_params["node"], body
        )
    except GraphError as exc:
        return _graph_error(sandbox, exc)
    return _JSON(result)


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(str(index).encode()).decode().rstrip("=")


def _uncursor(value: str) -> int:
    padded = value + "=" * (-len(value) % 4)
    try:
        return int(base64.urlsafe_b64decode(padded.encode()).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise GraphError(100, "invalid paging cursor") from None


async def _templates(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    if not _authorised(request, sandbox.config.token):
        return _unauthorised(sandbox)
    try:
        return _JSON(_template_page(request, sandbox))
    except GraphError as exc:
        return _graph_error(sandbox, exc)


def _template_page(request: Request, sandbox: Sandbox) -> dict[str, Any]:
    api_major(request.path_params["version"])
    if request.path_params["node"] != sandbox.config.waba_id:
        raise GraphError(
            100,
            f"Unsupported get request. Object with ID '{request.path_params['node']}' "
            "does not exist, cannot be loaded due to missing permissions, or does not "
            "support this operation",
        )
    q = request.query_params
    items = [t.raw for t in sandbox.templates.all()]
    for key in ("status", "category", "language"):
        if key in q:
            wanted = {v.strip() for v in q[key].split(",")}
            items = [t for t in items if str(t.get(key)) in wanted]
    if "name" in q:
        items = [t for t in items if q["name"] in str(t.get("name"))]
    try:
        limit = int(q.get("limit", _DEFAULT_PAGE))
    except ValueError:
        raise GraphError(100, "limit must be an integer") from None
    if not 1 <= limit <= _MAX_PAGE:
        raise GraphError(100, f"limit must be within 1..{_MAX_PAGE}")
    if "after" in q:
        start = _uncursor(q["after"]) + 1
        end = start + limit
    elif "before" in q:
        end = _uncursor(q["before"])
        start = max(0, end - limit)
    else:
        start, end = 0, limit
    end = min(end, len(items))
    wanted_fields = [f.strip() for f in q["fields"].split(",")] if "fields" in q else None
    data = []
    for offset, tpl in enumerate(items[start:end]):
        keys = wanted_fields if wanted_fields is not None else list(_TEMPLATE_FIELDS)
        obj = {k: tpl[k] for k in keys if k in tpl and k != "id"}
        obj["id"] = str(tpl.get("id", start + offset))
        data.append(obj)
    if not data:
        return {"data": []}
    paging: dict[str, Any] = {"cursors": {"before": _cursor(start), "after": _cursor(end - 1)}}
    base = request.url.remove_query_params(["after", "before"])
    if end < len(items):
        paging["next"] = str(base.include_query_params(limit=limit, after=_cursor(end - 1)))
    if start > 0:
        paging["previous"] = str(base.include_query_params(limit=limit, before=_cursor(start)))
    return {"data": data, "paging": paging}


# -- control API ------------------------------------------------------------------------------


def _problem(status: int, reason: str) -> Response:
    return _JSON({"error": reason}, status_code=status)


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        raise ReplyError("body must be JSON") from None
    if not isinstance(body, dict):
        raise ReplyError("body must be a JSON object")
    return body


async def _ctl_messages(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    return _JSON({"data": sandbox.list_messages(request.query_params.get("to"))})


def _reply_fields(body: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(body.get("to"), str):
        raise ReplyError("to is required")
    for key in ("button", "text", "list_row", "context_id"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise ReplyError(f"{key} must be a string")
    return body


async def _ctl_reply(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    try:
        body = _reply_fields(await _json_body(request))
        message = sandbox.reply(
            body["to"],
            button=body.get("button"),
            text=body.get("text"),
            list_row=body.get("list_row"),
            context_id=body.get("context_id"),
            delay=float(body.get("delay_ms", 0)) / 1000,
        )
    except (ReplyError, TypeError, ValueError) as exc:
        return _problem(400, str(exc) if isinstance(exc, ReplyError) else "invalid reply")
    return _JSON({"message": message})


async def _ctl_faults(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    if request.method == "POST":
        try:
            body = await _json_body(request)
            known = {f.name for f in fields(Faults)}
            unknown = sorted(set(body) - known)
            if unknown:
                return _problem(400, f"unknown fault settings: {', '.join(unknown)}")
            sandbox.set_faults(Faults(**body))
        except (ReplyError, TypeError, ValueError) as exc:
            return _problem(400, str(exc))
    return _JSON(asdict(sandbox.faults))


async def _ctl_scripts(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    if request.method == "POST":
        try:
            body = await _json_body(request)
            raw = body.get("scripts", [])
            if not isinstance(raw, list):
                return _problem(400, "scripts must be a list")
            scripts = [PatientScript(**s) for s in raw]
        except (ReplyError, TypeError, ValueError) as exc:
            return _problem(400, str(exc))
        if body.get("replace", True):
            sandbox.scripts = scripts
        else:
            sandbox.scripts.extend(scripts)
    return _JSON({"scripts": sandbox.scripts_json()})


async def _ctl_reset(request: Request) -> Response:
    request.app.state.sandbox.reset()
    return _JSON({"reset": True})


async def _ctl_stats(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    return _JSON(sandbox.stats.as_json(pending_webhooks=sandbox.webhooks.pending))


async def _ctl_webhooks(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    return _JSON({"data": [orjson.loads(raw) for raw in sandbox.webhooks.posted]})


async def _ctl_drain(request: Request) -> Response:
    sandbox: Sandbox = request.app.state.sandbox
    try:
        within = float(request.query_params.get("timeout", "10"))
    except ValueError:
        return _problem(400, "timeout must be a number")
    drained = await sandbox.webhooks.drain(min(within, 120.0))
    return _JSON({"drained": drained, "pending": sandbox.webhooks.pending})


class _LoopbackOnly:
    """Refuse ``/_sandbox/`` calls from anything but loopback: the control API has no auth."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/_sandbox/"):
            client = scope.get("client")
            host = client[0] if client else ""
            if host not in _LOOPBACK and not host.startswith("127."):
                await _problem(403, "the control API answers loopback clients only")(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)


def create_app(config: SandboxConfig) -> Starlette:
    """Build the sandbox ASGI app.

    The :class:`Sandbox` behind it is ``app.state.sandbox``. Webhook delivery starts with the
    lifespan, or with the first send when no lifespan runs (``httpx.ASGITransport``); call
    ``await app.state.sandbox.aclose()`` in that case.

    Args:
        config: The sandbox configuration.

    Returns:
        A Starlette application.

    Raises:
        TemplateFileError: The template file is unusable.
        OSError: The template file cannot be read.
    """
    sandbox = Sandbox(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await sandbox.start()
        try:
            yield
        finally:
            await sandbox.aclose()

    routes = [
        Route("/_sandbox/messages", _ctl_messages, methods=["GET"]),
        Route("/_sandbox/reply", _ctl_reply, methods=["POST"]),
        Route("/_sandbox/faults", _ctl_faults, methods=["GET", "POST"]),
        Route("/_sandbox/scripts", _ctl_scripts, methods=["GET", "POST"]),
        Route("/_sandbox/reset", _ctl_reset, methods=["POST"]),
        Route("/_sandbox/stats", _ctl_stats, methods=["GET"]),
        Route("/_sandbox/webhooks", _ctl_webhooks, methods=["GET"]),
        Route("/_sandbox/drain", _ctl_drain, methods=["POST"]),
        Route("/{version}/{node}/messages", _send, methods=["POST"]),
        Route("/{version}/{node}/message_templates", _templates, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.sandbox = sandbox
    app.add_middleware(_LoopbackOnly)  # type: ignore[arg-type]
    return app
