"""A scripted fake FHIR server (the outside system), mounted in-process with httpx.ASGITransport."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

BASE = "http://ehr.test/fhir"


@dataclass
class Scripted:
    """One canned answer for the next request whose method and path match."""

    method: str
    path: str
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeFhir:
    """Resources in a dict, scripted failures first, every request recorded."""

    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    script: list[Scripted] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    public_key: Any = None  # SMART: verify client assertions with it
    token_lifetime: int = 600
    tokens_issued: list[str] = field(default_factory=list)
    require_token: bool = False
    capability: dict[str, Any] = field(
        default_factory=lambda: {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-01-01",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [{"type": "Appointment", "interaction": [{"code": "read"}]}],
                }
            ],
        }
    )

    def put(self, resource: dict[str, Any]) -> None:
        self.resources[f"{resource['resourceType']}/{resource['id']}"] = resource

    def answer_next(
        self,
        method: str,
        path: str,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Script the next answer to ``method path`` (prefix match)."""
        self.script.append(Scripted(method, path, status, body, headers or {}))

    def paths(self) -> list[str]:
        return [f"{m} {p}" for m, p, _, _ in self.requests]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/token", self._token, methods=["POST"]),
                Route("/{path:path}", self._any, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            ]
        )

    async def _token(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode())
        self.requests.append(("POST", "/token", dict(request.headers), b""))
        assertion = form["client_assertion"][0]
        claims = jwt.decode(
            assertion,
            self.public_key,
            algorithms=["RS384", "ES384"],
            audience="http://ehr.test/token",
            options={"verify_iat": False},  # tests move a FixedClock forward
        )
        assert claims["iss"] == claims["sub"] == "bridge-client"
        assert form["grant_type"] == ["client_credentials"]
        token = f"token-{len(self.tokens_issued) + 1}"
        self.tokens_issued.append(token)
        return Response(json.dumps({"access_token": token, "expires_in": self.token_lifetime}), 200)

    async def _any(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        body = await request.body()
        self.requests.append((request.method, path, dict(request.headers), body))
        self.queries.append(request.url.query)
        for index, canned in enumerate(self.script):
            if canned.method == request.method and path.startswith(canned.path):
                del self.script[index]
                return Response(canned.body, canned.status, headers=canned.headers)
        if path == "/fhir/.well-known/smart-configuration":
            return self._json({"token_endpoint": "http://ehr.test/token"})
        current = f"Bearer {self.tokens_issued[-1]}" if self.tokens_issued else None
        if self.require_token and request.headers.get("authorization") != current:
            return Response(b"", 401)
        if path == "/fhir/metadata":
            return self._json(self.capability)
        key = path.removeprefix("/fhir/")
        if request.method == "GET" and key in self.resources:
            resource = self.resources[key]
            return self._json(
                resource, etag=f'W/"{resource.get("meta", {}).get("versionId", "1")}"'
            )
        if request.method == "GET" and "/" not in key:
            entries = [
                {"resource": r} for k, r in self.resources.items() if k.startswith(key + "/")
            ]
            return self._json({"resourceType": "Bundle", "type": "searchset", "entry": entries})
        return self._json(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "not-found"}],
            },
            status=404,
        )

    @staticmethod
    def _json(body: Any, status: int = 200, etag: str | None = None) -> Response:
        headers = {"ETag": etag} if etag else {}
        return Response(
            json.dumps(body), status, headers=headers, media_type="application/fhir+json"
        )


@pytest.fixture(name="fake_fhir")
def _fake_fhir() -> FakeFhir:
    return FakeFhir()


@pytest.fixture(name="transport")
def _transport(fake_fhir: FakeFhir) -> httpx.ASGITransport:
    return httpx.ASGITransport(app=fake_fhir)
