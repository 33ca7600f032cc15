"""Authorization for the FHIR client: none, a static bearer token, or SMART Backend Services.

Implements ../shared/reference/fhir.md §4: ``client_credentials`` with a ``private_key_jwt``
assertion (header alg RS384 or ES384, kid, typ JWT; claims iss = sub = client_id, aud = token
URL, exp ≤ 5 minutes, unique jti). There is no refresh token: a new assertion is minted when the
cached access token is about to expire. The token URL is configured or discovered from
``[base]/.well-known/smart-configuration``. Tokens and keys never reach a log or an exception.
"""

from __future__ import annotations

__all__ = ["BearerAuth", "FhirAuth", "NoAuth", "SmartBackendAuth", "check_private_key"]

import asyncio
import uuid
from datetime import timedelta
from typing import Protocol, runtime_checkable

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from bridge.errors import EHRRejected, EHRUnavailable
from bridge.ports import Clock

_CONNECTOR = "fhir"
#: Assertions live this long; SMART allows at most 5 minutes.
_ASSERTION_LIFETIME = timedelta(minutes=4)
#: Mint a new token this long before the old one expires, so no request carries a stale one.
_REFRESH_MARGIN = timedelta(seconds=60)


@runtime_checkable
class FhirAuth(Protocol):
    """**Protocol:** headers that authorize one request to the FHIR server."""

    async def headers(self, http: httpx.AsyncClient) -> dict[str, str]:
        """Return the Authorization header(s) to send, fetching a token when needed.

        Raises:
            bridge.errors.EHRUnavailable: the token endpoint could not be reached.
            bridge.errors.EHRRejected: the token endpoint refused us.
        """
        ...

    def invalidate(self) -> None:
        """Forget any cached token (the server answered 401)."""
        ...


class NoAuth:
    """No authorization (a test server, or a network-level trust)."""

    async def headers(self, http: httpx.AsyncClient) -> dict[str, str]:
        """Return no headers."""
        return {}

    def invalidate(self) -> None:
        """Nothing to forget."""


class BearerAuth:
    """A static bearer token from the secrets (``BRIDGE_FHIR_TOKEN``)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"

    async def headers(self, http: httpx.AsyncClient) -> dict[str, str]:
        """Return ``Authorization: Bearer <token>``."""
        return {"Authorization": f"Bearer {self._token}"}

    def invalidate(self) -> None:
        """A static token cannot be renewed; nothing to forget."""


def check_private_key(pem: str, alg: str) -> str | None:
    """Return why ``pem`` cannot sign with ``alg`` (RS384/ES384), or None when it can."""
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return "is not an unencrypted PEM private key"
    if alg == "RS384" and not isinstance(key, rsa.RSAPrivateKey):
        return "is not an RSA key, needed for RS384"
    if alg == "ES384" and not (
        isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
    ):
        return "is not an EC P-384 key, needed for ES384"
    return None


class SmartBackendAuth:
    """SMART Backend Services: a cached access token, renewed before it expires.

    Args:
        base_url: the FHIR base, for discovery of the token endpoint.
        client_id: the registered client id (iss and sub of the assertion).
        private_key: PEM private key (RSA for RS384, EC P-384 for ES384).
        alg: ``RS384`` or ``ES384``.
        scope: requested scopes (``system/Appointment.rs system/Appointment.u ...``).
        clock: the clock port (token expiry).
        kid: key id in the JWT header, as registered with the EHR.
        token_url: the token endpoint; discovered when None.
    """

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        private_key: str,
        alg: str,
        scope: str,
        clock: Clock,
        kid: str | None = None,
        token_url: str | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._client_id = client_id
        self._key = private_key
        self._alg = alg
        self._scope = scope
        self._clock = clock
        self._kid = kid
        self.token_url = token_url
        self._token: str | None = None
        self._expires_at = clock.now()
        self._lock = asyncio.Lock()
        #: how many tokens were fetched; lets tests see the cache work
        self.fetches = 0

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self._client_id!r}, alg={self._alg})"

    def invalidate(self) -> None:
        """Forget the cached token."""
        self._token = None

    async def headers(self, http: httpx.AsyncClient) -> dict[str, str]:
        """Return ``Authorization: Bearer <access token>``, minting a token when needed."""
        async with self._lock:
            if self._token is None or self._clock.now() >= self._expires_at - _REFRESH_MARGIN:
                await self._fetch(http)
            return {"Authorization": f"Bearer {self._token}"}

    async def _discover(self, http: httpx.AsyncClient) -> str:
        url = f"{self._base_url}/.well-known/smart-configuration"
        try:
            answer = await http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise EHRUnavailable(_CONNECTOR, f"smart-configuration: {type(exc).__name__}") from exc
        if answer.status_code >= 500:
            raise EHRUnavailable(_CONNECTOR, f"smart-configuration answered {answer.status_code}")
        try:
            token_url = answer.json()["token_endpoint"]
        except (ValueError, KeyError, TypeError) as exc:
            raise EHRRejected(
                _CONNECTOR, str(answer.status_code), "smart-configuration has no token_endpoint"
            ) from exc
        if not isinstance(token_url, str):
            raise EHRRejected(_CONNECTOR, "smart", "token_endpoint is not a URL")
        return token_url

    def assertion(self, token_url: str) -> str:
        """Sign a fresh client assertion for ``token_url`` (public for tests)."""
        now = self._clock.now()
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": token_url,
            "iat": int(now.timestamp()),
            "exp": int((now + _ASSERTION_LIFETIME).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        headers = {"typ": "JWT", **({"kid": self._kid} if self._kid else {})}
        return jwt.encode(claims, self._key, algorithm=self._alg, headers=headers)

    async def _fetch(self, http: httpx.AsyncClient) -> None:
        if self.token_url is None:
            self.token_url = await self._discover(http)
        form = {
            "grant_type": "client_credentials",
            "scope": self._scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": self.assertion(self.token_url),
        }
        try:
            answer = await http.post(
                self.token_url, data=form, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise EHRUnavailable(_CONNECTOR, f"token endpoint: {type(exc).__name__}") from exc
        if answer.status_code >= 500 or answer.status_code == 429:
            raise EHRUnavailable(_CONNECTOR, f"token endpoint answered {answer.status_code}")
        if answer.status_code >= 400:
            raise EHRRejected(_CONNECTOR, str(answer.status_code), "token request refused")
        try:
            body = answer.json()
            token = body["access_token"]
            lifetime = int(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError) as exc:
            raise EHRUnavailable(_CONNECTOR, "token endpoint answer has no access_token") from exc
        if not isinstance(token, str) or not token:
            raise EHRUnavailable(_CONNECTOR, "token endpoint answer has no access_token")
        self._token = token
        self._expires_at = self._clock.now() + timedelta(seconds=max(lifetime, 1))
        self.fetches += 1
