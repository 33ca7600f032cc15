"""The admin door: bearer tokens with roles, and the few operator actions served over HTTP.

Tokens come from ``BRIDGE_ADMIN_TOKENS`` (or ``BRIDGE_ADMIN_TOKENS_FILE``): comma- or
newline-separated ``name:role:token`` entries, role ``read`` or ``operator``. Every presented
token is compared with every configured one in constant time, so neither timing nor an early
exit tells an attacker how close a guess was. An operator action is written to the audit log
with the token's *name* (never the token).

``/healthz`` and ``/readyz`` stay open (load balancers, systemd). ``/metrics`` needs a token when
the HTTP listener is bound beyond loopback, or when ``http.metrics_require_token`` is set.
"""

from __future__ import annotations

__all__ = ["AdminToken", "AdminTokens", "admin_routes", "parse_admin_tokens"]

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.errors import ConfigProblem, NotFound
from bridge.metrics import Metrics

#: Roles and what they include.
_ROLES = {"read": {"read"}, "operator": {"read", "operator"}}


@dataclass(frozen=True, slots=True)
class AdminToken:
    """One configured token: its name (for the audit log), role and secret value."""

    name: str
    role: str
    secret: str


def parse_admin_tokens(raw: str) -> tuple[list[AdminToken], list[ConfigProblem]]:
    """Parse ``name:role:token`` entries; problems name the entry by position, never its token."""
    tokens: list[AdminToken] = []
    problems: list[ConfigProblem] = []
    entries = [e.strip() for e in raw.replace("\n", ",").split(",") if e.strip()]
    for position, entry in enumerate(entries, 1):
        name, _, rest = entry.partition(":")
        role, _, secret = rest.partition(":")
        if not name or role not in _ROLES or len(secret) < 16:
            problems.append(ConfigProblem(
                "environment", f"BRIDGE_ADMIN_TOKENS entry {position}",
                "expected name:role:token with role read or operator and a token of at "
                "least 16 characters"))
            continue
        tokens.append(AdminToken(name, role, secret))
    return tokens, problems


class AdminTokens:
    """Checks ``Authorization: Bearer`` headers against the configured tokens."""

    def __init__(self, tokens: list[AdminToken], metrics: Metrics) -> None:
        self._tokens = tokens
        self._metrics = metrics

    @property
    def configured(self) -> bool:
        """True when at least one token exists."""
        return bool(self._tokens)

    def authenticate(self, request: Request, role: str) -> AdminToken | Response:
        """The matching token, or the 401/403 response to send."""
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            self._metrics.http_rejected.labels("admin_no_credentials").inc()
            return JSONResponse({"error": "unauthorized"}, status_code=401,
                                headers={"www-authenticate": "Bearer"})
        presented = presented.strip()
        match: AdminToken | None = None
        for token in self._tokens:  # compare with all of them: no early exit
            if hmac.compare_digest(token.secret.encode(), presented.encode()):
                match = token
        if match is None:
            self._metrics.http_rejected.labels("admin_bad_credentials").inc()
            return JSONResponse({"error": "unauthorized"}, status_code=401,
                                headers={"www-authenticate": "Bearer"})
        if role not in _ROLES[match.role]:
            self._metrics.http_rejected.labels("admin_forbidden").inc()
            return JSONResponse({"error": "forbidden", "needs": role}, status_code=403)
        return match


#: (request, token name) → JSON-able result of an operator action.
AdminAction = Callable[[Request, str], Awaitable[dict[str, object]]]


def admin_routes(
    tokens: AdminTokens,
    *,
    status: Callable[[], Awaitable[dict[str, object]]],
    retry_outbox: AdminAction,
    release_handoff: AdminAction,
) -> list[Route]:
    """``GET /admin/status`` (read), ``POST /admin/outbox/{id}/retry`` and
    ``POST /admin/handoff/{address}/release`` (operator)."""

    async def status_endpoint(request: Request) -> Response:
        auth = tokens.authenticate(request, "read")
        if isinstance(auth, Response):
            return auth
        return JSONResponse(await status())

    def operator(action: AdminAction) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            auth = tokens.authenticate(request, "operator")
            if isinstance(auth, Response):
                return auth
            try:
                return JSONResponse(await action(request, auth.name))
            except NotFound as exc:
                return JSONResponse({"error": "not_found", "detail": str(exc)}, status_code=404)
            except ValueError:
                return JSONResponse({"error": "bad_request"}, status_code=400)

        return endpoint

    return [
        Route("/admin/status", status_endpoint, methods=["GET"]),
        Route("/admin/outbox/{row_id}/retry", operator(retry_outbox), methods=["POST"]),
        Route("/admin/handoff/{address}/release", operator(release_handoff), methods=["POST"]),
    ]
