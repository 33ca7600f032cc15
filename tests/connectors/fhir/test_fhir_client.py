"""FHIR client: retries, Retry-After, error mapping, paging safety, SMART Backend Services, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from bridge.errors import EHRRejected, EHRUnavailable
from bridge.testing import FixedClock
from connectors.fhir import Capabilities, FhirClient
from connectors.fhir._auth import BearerAuth, SmartBackendAuth, check_private_key

BASE = "http://ehr.test/fhir"
CORPUS = Path("/work/shared/corpus/fhir")
if not CORPUS.is_dir():
    CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus" / "fhir"


def _client(transport: httpx.AsyncBaseTransport, **kw: Any) -> FhirClient:
    return FhirClient(BASE, transport=transport, backoff=0.01, retries=3, **kw)


def _scripted(
    fake: Any, *answers: tuple[int, bytes, dict[str, str]], path: str = "/fhir/Appointment/a1"
) -> None:
    for status, body, headers in answers:
        fake.answer_next("GET", path, status, body, headers)


APPT = {
    "resourceType": "Appointment",
    "id": "a1",
    "meta": {"versionId": "4"},
    "status": "booked",
    "participant": [],
}


@dataclass(frozen=True)
class ErrorCase:
    label: str
    status: int
    body: bytes
    headers: dict[str, str]
    error: type[Exception]
    conflict: bool = False
    attempts: int = 1


ERROR_CASES = [
    ErrorCase("5xx three times", 503, b"", {}, EHRUnavailable, attempts=3),
    ErrorCase("429 three times", 429, b"", {"Retry-After": "0"}, EHRUnavailable, attempts=3),
    ErrorCase(
        "412 precondition",
        412,
        b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"conflict"}]}',
        {},
        EHRRejected,
        conflict=True,
    ),
    ErrorCase("409 conflict", 409, b"", {}, EHRRejected, conflict=True),
    ErrorCase("404 not found", 404, b"", {}, EHRRejected),
    ErrorCase("422 unprocessable", 422, b"{}", {}, EHRRejected),
    ErrorCase(
        "HTML login page", 200, b"<html>login</html>", {"Content-Type": "text/html"}, EHRUnavailable
    ),
    ErrorCase(
        "garbage body", 200, b"{not json", {"Content-Type": "application/fhir+json"}, EHRUnavailable
    ),
]


class TestErrors:
    @pytest.mark.parametrize("case", ERROR_CASES, ids=lambda c: c.label)
    async def test_answer_maps_to_the_right_error_type(
        self, fake_fhir: Any, transport: Any, case: ErrorCase
    ) -> None:
        _scripted(fake_fhir, *[(case.status, case.body, case.headers)] * 3)
        client = _client(transport)
        with pytest.raises(case.error) as caught:
            await client.read("Appointment", "a1")
        assert getattr(caught.value, "conflict", False) is case.conflict
        assert fake_fhir.paths().count("GET /fhir/Appointment/a1") == case.attempts
        assert "a1" not in str(caught.value)  # ids in messages are types only (could be MRN-like)

    async def test_5xx_then_success_is_retried_and_returns_the_resource(
        self, fake_fhir: Any, transport: Any
    ) -> None:
        fake_fhir.put(APPT)
        _scripted(fake_fhir, (502, b"", {}), (500, b"", {}))
        answer = await _client(transport).read("Appointment", "a1")
        assert (answer.status, answer.version) == (200, "4")
        assert fake_fhir.paths().count("GET /fhir/Appointment/a1") == 3

    async def test_retry_after_is_honoured(self, fake_fhir: Any, transport: Any) -> None:
        fake_fhir.put(APPT)
        _scripted(fake_fhir, (429, b"", {"Retry-After": "0.3"}))
        started = time.monotonic()
        await _client(transport).read("Appointment", "a1")
        assert time.monotonic() - started >= 0.3

    async def test_post_is_not_retried_after_a_500(self, fake_fhir: Any, transport: Any) -> None:
        fake_fhir.answer_next("POST", "/fhir/Task", 500)
        with pytest.raises(EHRUnavailable):
            await _client(transport).create(
                {"resourceType": "Task", "status": "requested", "intent": "order"}
            )
        assert fake_fhir.paths().count("POST /fhir/Task") == 1

    async def test_timeout_is_unavailable(self) -> None:
        writers: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await reader.read()  # never answer; return when the client gives up

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            client = FhirClient(
                f"http://127.0.0.1:{port}/fhir", timeout=0.2, retries=2, backoff=0.01
            )
            async with asyncio.timeout(5):
                with pytest.raises(EHRUnavailable):
                    await client.read("Appointment", "a1")
            await client.aclose()
            for writer in writers:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        assert len(writers) == 2  # a timeout is retried

    async def test_connection_refused_is_unavailable(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        client = FhirClient(f"http://127.0.0.1:{port}/fhir", retries=2, backoff=0.01)
        with pytest.raises(EHRUnavailable):
            await client.read("Appointment", "a1")
        await client.aclose()

    async def test_next_link_to_another_host_is_not_followed(
        self, fake_fhir: Any, transport: Any
    ) -> None:
        page = {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": "http://evil.test/fhir/Appointment?page=2"}],
        }
        _scripted(fake_fhir, (200, json.dumps(page).encode(), {}), path="/fhir/Appointment")
        client = _client(transport, auth=BearerAuth("tok"))
        pages = client.search_pages("Appointment", [])
        assert (await pages.__anext__())["type"] == "searchset"
        with pytest.raises(EHRRejected):
            await pages.__anext__()
        assert all("evil" not in p for p in fake_fhir.paths())


class TestCapabilities:
    def test_backport_capability_statement_is_read(self) -> None:
        statement = json.loads(
            (
                CORPUS / "CapabilityStatement__backport-subscription-server-r4__backport-ig.json"
            ).read_text()
        )
        caps = Capabilities.from_resource(statement)
        assert caps.fhir_version.startswith("4.0")
        assert caps.subscriptions
        assert caps.has_operation("Subscription", "status")

    async def test_capabilities_are_read_from_metadata(
        self, fake_fhir: Any, transport: Any
    ) -> None:
        caps = await _client(transport).capabilities()
        assert caps.supports("Appointment", "read") and not caps.supports("Appointment", "patch")


def _rsa_pem() -> tuple[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem.decode(), key.public_key()


def _ec_pem() -> tuple[str, Any]:
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem.decode(), key.public_key()


class TestSmartBackendServices:
    @pytest.mark.parametrize(("alg", "make_key"), [("RS384", _rsa_pem), ("ES384", _ec_pem)])
    async def test_token_is_fetched_once_cached_and_renewed_before_expiry(
        self, fake_fhir: Any, transport: Any, alg: str, make_key: Any
    ) -> None:
        pem, public = make_key()
        fake_fhir.public_key, fake_fhir.require_token, fake_fhir.token_lifetime = public, True, 300
        fake_fhir.put(APPT)
        clock = FixedClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
        auth = SmartBackendAuth(
            base_url=BASE,
            client_id="bridge-client",
            private_key=pem,
            alg=alg,
            scope="system/Appointment.rs",
            clock=clock,
            kid="k1",
        )
        client = _client(transport, auth=auth)
        await client.read("Appointment", "a1")
        await client.read("Appointment", "a1")
        assert auth.fetches == 1 and auth.token_url == "http://ehr.test/token"  # discovered
        clock.advance(dt.timedelta(seconds=250))  # inside the refresh margin
        await client.read("Appointment", "a1")
        assert auth.fetches == 2
        assert [
            h["authorization"] for m, p, h, _ in fake_fhir.requests if p == "/fhir/Appointment/a1"
        ] == [
            "Bearer token-1",
            "Bearer token-1",
            "Bearer token-2",
        ]

    async def test_401_mints_a_new_token_once(self, fake_fhir: Any, transport: Any) -> None:
        pem, public = _rsa_pem()
        fake_fhir.public_key = public
        fake_fhir.put(APPT)
        _scripted(fake_fhir, (401, b"", {}))
        clock = FixedClock(dt.datetime.now(dt.UTC).replace(microsecond=0))
        auth = SmartBackendAuth(
            base_url=BASE,
            client_id="bridge-client",
            private_key=pem,
            alg="RS384",
            scope="s",
            clock=clock,
            token_url="http://ehr.test/token",
        )
        answer = await _client(transport, auth=auth).read("Appointment", "a1")
        assert answer.status == 200 and auth.fetches == 2

    def test_key_of_the_wrong_kind_is_reported(self) -> None:
        rsa_pem, _ = _rsa_pem()
        assert check_private_key(rsa_pem, "RS384") is None
        assert check_private_key(rsa_pem, "ES384") is not None
        assert check_private_key("not a key", "RS384") is not None

    def test_repr_never_shows_secrets(self) -> None:
        assert "tok-secret" not in repr(BearerAuth("tok-secret"))


@pytest.fixture(name="tls_server")
async def _tls_server(tmp_path: Path) -> AsyncIterator[int]:
    """A loopback HTTPS server with a self-signed certificate answering one FHIR metadata."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    body = b'{"resourceType":"CapabilityStatement","fhirVersion":"4.0.1"}'

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    async with server:
        yield server.sockets[0].getsockname()[1]


class TestTls:
    async def test_tls_is_verified_by_default_and_off_only_when_configured(
        self, tls_server: int
    ) -> None:
        async with asyncio.timeout(10):
            strict = FhirClient(f"https://127.0.0.1:{tls_server}/fhir", retries=1)
            with pytest.raises(EHRUnavailable):
                await strict.capabilities()
            await strict.aclose()
            lax = FhirClient(f"https://127.0.0.1:{tls_server}/fhir", retries=1, verify=False)
            assert (await lax.capabilities()).fhir_version == "4.0.1"
            await lax.aclose()
