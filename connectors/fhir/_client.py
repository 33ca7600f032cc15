"""Async FHIR R4 REST client: retries, error mapping, ETags, paging, CapabilityStatement.

Implements ../shared/reference/fhir.md §2.3 (paging by ``next`` links), §3.2 (``ETag``/
``If-Match``, 409/412 as conflicts) and the takeaway "read the CapabilityStatement first".

Errors are mapped at this boundary (STYLE.md §6), so callers only look at exception types:

=====================================================  ==========================================
what happened                                          raised
=====================================================  ==========================================
connect error, timeout, 5xx, 429 (after retries)       EHRUnavailable
an HTML page or unreadable body instead of FHIR JSON   EHRUnavailable
409, 412 (version conflict)                            EHRRejected(conflict=True)
any other 4xx                                          EHRRejected
=====================================================  ==========================================

429 and 5xx are retried with exponential backoff (tenacity), honouring ``Retry-After``. A POST
is retried only when the server cannot have acted on it (connect error, 429, 503). TLS is
verified unless the target's config says ``tls_verify = false``.
"""

from __future__ import annotations

__all__ = ["Capabilities", "FhirClient", "FhirResponse"]

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from structlog.typing import FilteringBoundLogger
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from bridge.errors import EHRRejected, EHRUnavailable

from ._auth import FhirAuth, NoAuth

_CONNECTOR = "fhir"
_FHIR_JSON = "application/fhir+json"
#: Never wait longer than this for one retry, whatever Retry-After says.
_MAX_WAIT_SECONDS = 30.0
#: Status codes after which a POST was certainly not applied.
_POST_SAFE_RETRY = frozenset({429, 503})


class _Transient(Exception):
    """A failure worth another try (internal to the retry loop)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        self.reason, self.retry_after = reason, retry_after
        super().__init__(reason)


@dataclass(frozen=True, kw_only=True, slots=True)
class FhirResponse:
    """One answer from the server.

    Attributes:
        status: the HTTP status.
        resource: the decoded body, or None when empty.
        etag: the ``ETag`` header (``W/"3"``), when sent.
        location: the ``Location`` / ``Content-Location`` header, when sent.
    """

    status: int
    resource: dict[str, Any] | None = None
    etag: str | None = None
    location: str | None = None

    @property
    def version(self) -> str | None:
        """The version id from the ETag, else from ``meta.versionId``."""
        if self.etag:
            return self.etag.removeprefix("W/").strip('"') or None
        meta = (self.resource or {}).get("meta")
        version = meta.get("versionId") if isinstance(meta, Mapping) else None
        return str(version) if version else None


@dataclass(frozen=True, kw_only=True, slots=True)
class Capabilities:
    """What the server's CapabilityStatement says it can do (only ids and codes).

    Attributes:
        fhir_version: ``4.0.1`` etc.
        software: software name and version, for the log.
        interactions: resource type → interaction codes (read, update, patch...).
        operations: ``Type/$name`` (and ``$name`` for system level) operations offered.
        topics: subscription topic canonicals advertised (backport).
        subscriptions: the server supports the Subscription resource.
        patch_formats: accepted PATCH content types.
    """

    fhir_version: str = ""
    software: str = ""
    interactions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    operations: frozenset[str] = frozenset()
    topics: tuple[str, ...] = ()
    subscriptions: bool = False
    patch_formats: tuple[str, ...] = ()

    @classmethod
    def from_resource(cls, statement: Mapping[str, Any]) -> Capabilities:
        """Read a CapabilityStatement resource (decoded JSON); unknown parts are ignored."""
        interactions: dict[str, frozenset[str]] = {}
        operations: set[str] = set()
        topics: list[str] = []
        for rest in statement.get("rest", []) or []:
            if not isinstance(rest, Mapping) or rest.get("mode", "server") != "server":
                continue
            for op in rest.get("operation", []) or []:
                if isinstance(op, Mapping) and isinstance(op.get("name"), str):
                    operations.add(f"${op['name'].lstrip('$')}")
            for res in rest.get("resource", []) or []:
                if not isinstance(res, Mapping) or not isinstance(res.get("type"), str):
                    continue
                rtype = res["type"]
                interactions[rtype] = frozenset(
                    str(i.get("code")) for i in res.get("interaction", []) if isinstance(i, Mapping)
                )
                for op in res.get("operation", []) or []:
                    if isinstance(op, Mapping) and isinstance(op.get("name"), str):
                        operations.add(f"{rtype}/${op['name'].lstrip('$')}")
                if rtype == "Subscription":
                    topics.extend(
                        str(e.get("valueCanonical"))
                        for e in res.get("extension", []) or []
                        if isinstance(e, Mapping)
                        and str(e.get("url", "")).endswith("subscriptiontopic-canonical")
                    )
        software = statement.get("software")
        name = ""
        if isinstance(software, Mapping):
            name = f"{software.get('name', '')} {software.get('version', '')}".strip()
        return cls(
            fhir_version=str(statement.get("fhirVersion", "")),
            software=name,
            interactions=interactions,
            operations=frozenset(operations),
            topics=tuple(topics),
            subscriptions="Subscription" in interactions,
            patch_formats=tuple(str(f) for f in statement.get("patchFormat", []) or []),
        )

    def supports(self, resource_type: str, interaction: str) -> bool:
        """True when the server lists ``interaction`` for ``resource_type``."""
        return interaction in self.interactions.get(resource_type, frozenset())

    def has_operation(self, resource_type: str, name: str) -> bool:
        """True when ``Type/$name`` (or system-level ``$name``) is offered."""
        name = f"${name.lstrip('$')}"
        return f"{resource_type}/{name}" in self.operations or name in self.operations


def _outcome_code(body: Any) -> str:
    """The first OperationOutcome issue code (a code, never diagnostics text)."""
    if isinstance(body, Mapping) and body.get("resourceType") == "OperationOutcome":
        for issue in body.get("issue", []) or []:
            if isinstance(issue, Mapping) and isinstance(issue.get("code"), str):
                return str(issue["code"])[:32]
    return "no OperationOutcome"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class FhirClient:
    """A small async FHIR client over httpx, bound to one base URL.

    Args:
        base_url: the FHIR base (``https://ehr.example/fhir``).
        auth: how to authorize requests.
        verify: verify TLS; only the target's explicit ``tls_verify = false`` turns it off.
        timeout: seconds per request.
        retries: attempts for a retryable failure (1 = no retry).
        backoff: first backoff in seconds (doubles each attempt, capped).
        transport: an httpx transport (tests mount an app in-process).
        log: a structlog logger; only ids and codes are logged.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: FhirAuth | None = None,
        verify: bool = True,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth: FhirAuth = auth or NoAuth()
        self._retries = max(1, retries)
        self._backoff = backoff
        self._log = log
        self._http = httpx.AsyncClient(
            verify=verify, timeout=timeout, transport=transport, follow_redirects=False
        )
        base = urlsplit(self.base_url)
        self._origin = (base.scheme, base.netloc)
        #: the last CapabilityStatement read, or None before :meth:`capabilities`
        self.capability: Capabilities | None = None

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    def url(self, path: str) -> str:
        """An absolute URL for ``path`` (``Appointment/1``) or a same-origin absolute URL.

        Raises:
            bridge.errors.EHRRejected: an absolute URL on another host (a ``next`` link or a
                notification focus must not send our token elsewhere).
        """
        if path.startswith(("http://", "https://")):
            parts = urlsplit(path)
            if (parts.scheme, parts.netloc) != self._origin:
                raise EHRRejected(_CONNECTOR, "origin", "URL is not on the configured FHIR server")
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def _wait(self, state: RetryCallState) -> float:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return min(exc.retry_after, _MAX_WAIT_SECONDS)
        return float(min(self._backoff * 2 ** (state.attempt_number - 1), _MAX_WAIT_SECONDS))

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]] | None = None,
        body: Any = None,
        content_type: str = _FHIR_JSON,
        headers: Mapping[str, str] | None = None,
    ) -> FhirResponse:
        """Send one request with retries and error mapping.

        Args:
            method: HTTP method.
            path: relative to the base, or an absolute same-origin URL.
            params: query parameters.
            body: JSON-able body.
            content_type: the body's media type.
            headers: extra headers (If-Match, Prefer, If-None-Exist).

        Returns:
            The status, decoded body and ETag/Location.

        Raises:
            bridge.errors.EHRUnavailable: transient failure after retries, or a non-FHIR answer.
            bridge.errors.EHRRejected: a 4xx (``conflict`` set for 409/412).
        """
        url = self.url(path)
        content = orjson.dumps(body) if body is not None else None
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._retries),
                wait=self._wait,
                retry=retry_if_exception_type(_Transient),
                reraise=True,
            ):
                with attempt:
                    return await self._once(method, url, params, content, content_type, headers)
        except _Transient as exc:
            raise EHRUnavailable(_CONNECTOR, f"{method} {_kind(path)}: {exc.reason}") from exc
        raise EHRUnavailable(_CONNECTOR, "no attempt made")  # pragma: no cover - tenacity loops

    async def _once(
        self,
        method: str,
        url: str,
        params: Sequence[tuple[str, str]] | None,
        content: bytes | None,
        content_type: str,
        headers: Mapping[str, str] | None,
    ) -> FhirResponse:
        send_headers = {"Accept": _FHIR_JSON, **(headers or {})}
        if content is not None:
            send_headers["Content-Type"] = content_type
        for auth_try in range(2):
            send_headers.update(await self._auth.headers(self._http))
            try:
                response = await self._http.request(
                    method, url, params=list(params or ()), content=content, headers=send_headers
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise _Transient(type(exc).__name__) from exc
            except httpx.TransportError as exc:
                if method == "POST":  # the server may have acted: do not repeat a create
                    raise EHRUnavailable(_CONNECTOR, f"POST: {type(exc).__name__}") from exc
                raise _Transient(type(exc).__name__) from exc
            if response.status_code == 401 and auth_try == 0:
                self._auth.invalidate()  # an expired or revoked token: mint another once
                continue
            break
        return self._answer(method, url, response)

    def _answer(self, method: str, url: str, response: httpx.Response) -> FhirResponse:
        status = response.status_code
        kind = _kind(url.removeprefix(self.base_url))
        if status == 429 or status >= 500:
            if method == "POST" and status not in _POST_SAFE_RETRY:
                raise EHRUnavailable(_CONNECTOR, f"POST {kind}: server answered {status}")
            raise _Transient(f"server answered {status}", _retry_after(response))
        ctype = response.headers.get("content-type", "")
        body: Any = None
        if response.content.strip():
            if "html" in ctype.lower():
                raise EHRUnavailable(_CONNECTOR, f"{method} {kind}: answered HTML ({status})")
            try:
                body = orjson.loads(response.content)
            except orjson.JSONDecodeError as exc:
                if status < 400:
                    raise EHRUnavailable(
                        _CONNECTOR, f"{method} {kind}: unreadable body ({status})"
                    ) from exc
        if status in (409, 412):
            raise EHRRejected(
                _CONNECTOR, str(status), f"{method} {kind}: version conflict", conflict=True
            )
        if status >= 400:
            raise EHRRejected(_CONNECTOR, str(status), f"{method} {kind}: {_outcome_code(body)}")
        if body is not None and not isinstance(body, dict):
            raise EHRUnavailable(_CONNECTOR, f"{method} {kind}: body is not a FHIR resource")
        return FhirResponse(
            status=status,
            resource=body,
            etag=response.headers.get("etag"),
            location=response.headers.get("location") or response.headers.get("content-location"),
        )

    async def capabilities(self) -> Capabilities:
        """Read ``[base]/metadata`` and remember it in :attr:`capability`."""
        answer = await self.request("GET", "metadata")
        self.capability = Capabilities.from_resource(answer.resource or {})
        return self.capability

    async def read(self, resource_type: str, resource_id: str) -> FhirResponse:
        """``GET [base]/Type/id``."""
        return await self.request("GET", f"{resource_type}/{resource_id}")

    async def vread(self, resource_type: str, resource_id: str, version: str) -> FhirResponse:
        """``GET [base]/Type/id/_history/vid``."""
        return await self.request("GET", f"{resource_type}/{resource_id}/_history/{version}")

    async def create(
        self, resource: Mapping[str, Any], *, if_none_exist: str | None = None
    ) -> FhirResponse:
        """``POST [base]/Type``, conditional with ``If-None-Exist`` when given."""
        headers = {"Prefer": "return=representation"}
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        return await self.request(
            "POST", str(resource["resourceType"]), body=resource, headers=headers
        )

    async def update(self, resource: Mapping[str, Any], *, version: str | None) -> FhirResponse:
        """``PUT [base]/Type/id`` with ``If-Match: W/"version"`` when a version is given."""
        headers = {"Prefer": "return=representation"}
        if version:
            headers["If-Match"] = f'W/"{version}"'
        path = f"{resource['resourceType']}/{resource['id']}"
        return await self.request("PUT", path, body=resource, headers=headers)

    async def patch(
        self,
        resource_type: str,
        resource_id: str,
        operations: Sequence[Mapping[str, Any]],
        *,
        version: str | None,
    ) -> FhirResponse:
        """``PATCH`` with a JSON Patch document and ``If-Match`` when a version is given."""
        headers = {"Prefer": "return=representation"}
        if version:
            headers["If-Match"] = f'W/"{version}"'
        return await self.request(
            "PATCH",
            f"{resource_type}/{resource_id}",
            body=list(operations),
            content_type="application/json-patch+json",
            headers=headers,
        )

    async def search_pages(
        self, resource_type: str, params: Sequence[tuple[str, str]], *, max_pages: int = 50
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield each searchset Bundle page, following ``next`` links verbatim (§2.3)."""
        answer = await self.request("GET", resource_type, params=params)
        for _ in range(max_pages):
            page = answer.resource or {}
            yield page
            next_url = next(
                (
                    link.get("url")
                    for link in page.get("link", []) or []
                    if isinstance(link, Mapping) and link.get("relation") == "next"
                ),
                None,
            )
            if not isinstance(next_url, str):
                return
            answer = await self.request("GET", next_url)


def _kind(path: str) -> str:
    """The resource type of a path, for messages: ids may be business identifiers."""
    first = path.strip("/").split("/", 1)[0].split("?", 1)[0]
    return first or "base"
