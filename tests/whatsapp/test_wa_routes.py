"""/webhooks/whatsapp: verification handshake and signed intake into the store."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from bridge.domain import InboundMessage, IngestOutcome
from bridge.errors import StoreUnavailable
from bridge.ports import PluginContext
from bridge.testing import FixedClock, MemorySink
from bridge.whatsapp import WhatsAppChannel, webhook_routes

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "whatsapp"
SECRET = b"app-secret"
VERIFY = "verify-me"


class DownSink:
    """A store that cannot be reached."""

    def __init__(self) -> None:
        self.calls = 0

    async def ingest(self, message: InboundMessage) -> IngestOutcome:
        self.calls += 1
        raise StoreUnavailable("sqlite:///x", "disk I/O error")


def make_client(
    sink: Any, *, app_secret: bytes | None = SECRET, verify_token: str | None = VERIFY
) -> httpx.AsyncClient:
    from datetime import UTC, datetime

    channel = WhatsAppChannel.from_config(
        {},
        PluginContext(
            section_path="whatsapp",
            data_dir=Path("/tmp"),
            secrets={},
            clock=FixedClock(datetime(2026, 3, 2, tzinfo=UTC)),
        ),
    )
    app = Starlette(
        routes=webhook_routes(channel, sink, verify_token=verify_token, app_secret=app_secret)
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bridge")


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class TestVerification:
    async def test_matching_token_echoes_the_raw_challenge(self):
        async with make_client(MemorySink()) as client:
            r = await client.get(
                "/webhooks/whatsapp",
                params={
                    "hub.mode": "subscribe",
                    "hub.verify_token": VERIFY,
                    "hub.challenge": "1158201444",
                },
            )
        assert r.status_code == 200
        assert r.text == "1158201444"
        assert r.headers["content-type"].startswith("text/plain")

    @pytest.mark.parametrize(
        "params",
        [
            {"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"},
            {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY, "hub.challenge": "1"},
            {"hub.mode": "subscribe", "hub.verify_token": VERIFY},
            {},
        ],
        ids=["wrong token", "wrong mode", "no challenge", "nothing"],
    )
    async def test_anything_else_is_403(self, params):
        async with make_client(MemorySink()) as client:
            r = await client.get("/webhooks/whatsapp", params=params)
        assert r.status_code == 403

    async def test_no_configured_token_refuses_everyone(self):
        async with make_client(MemorySink(), verify_token=None) as client:
            r = await client.get(
                "/webhooks/whatsapp",
                params={"hub.mode": "subscribe", "hub.verify_token": "", "hub.challenge": "1"},
            )
        assert r.status_code == 403


class TestIntake:
    async def test_signed_body_is_stored_raw_with_its_translation(self):
        sink = MemorySink()
        body = (CORPUS / "webhook_status_sent_biz_opaque_callback_data__pywa.json").read_bytes()
        async with make_client(sink) as client:
            r = await client.post(
                "/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign(body)}
            )
        assert r.status_code == 200
        assert r.json() == {"status": "accepted"}
        (message,) = sink.messages
        assert message.payload == body
        assert message.connector == "whatsapp"
        assert message.sender == "1122334455667"
        assert message.source_id == hashlib.sha256(body).hexdigest()
        assert message.content_type == "application/json"
        assert [e.type for e in sink.events] == ["status.updated"]

    async def test_same_body_twice_is_a_duplicate(self):
        sink = MemorySink()
        body = (CORPUS / "webhook_inbound_text__pywa.json").read_bytes()
        async with make_client(sink) as client:
            for _ in range(2):
                r = await client.post(
                    "/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign(body)}
                )
                assert r.status_code == 200
        assert sink.outcomes == [IngestOutcome.ACCEPTED, IngestOutcome.DUPLICATE]
        assert len(sink.messages) == 1

    @pytest.mark.parametrize(
        "header", [None, "sha256=00", "sha256=" + "0" * 64], ids=["missing", "short", "wrong"]
    )
    async def test_bad_signature_is_401_and_nothing_is_stored(self, header):
        sink = MemorySink()
        body = (CORPUS / "webhook_inbound_text__pywa.json").read_bytes()
        headers = {"X-Hub-Signature-256": header} if header else {}
        async with make_client(sink) as client:
            r = await client.post("/webhooks/whatsapp", content=body, headers=headers)
        assert r.status_code == 401
        assert sink.messages == []
        assert sink.outcomes == []

    async def test_reserialised_body_fails_the_signature(self):
        sink = MemorySink()
        original = json.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [{"id": "1", "changes": [], "n": "Peña"}],
            }
        ).encode()
        reserialised = json.dumps(json.loads(original), ensure_ascii=False).encode()
        async with make_client(sink) as client:
            r = await client.post(
                "/webhooks/whatsapp",
                content=reserialised,
                headers={"X-Hub-Signature-256": sign(original)},
            )
        assert r.status_code == 401
        assert sink.messages == []

    async def test_signed_garbage_is_quarantined_and_still_200(self):
        sink = MemorySink()
        body = b"<xml>not a webhook</xml>"
        async with make_client(sink) as client:
            r = await client.post(
                "/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign(body)}
            )
        assert r.status_code == 200
        assert sink.outcomes == [IngestOutcome.QUARANTINED]
        assert sink.messages[0].sender == "unknown"
        assert sink.messages[0].translation.problems[0].code == "webhook.not_json"

    async def test_store_down_is_503_so_meta_retries(self):
        sink = DownSink()
        body = (CORPUS / "webhook_inbound_text__pywa.json").read_bytes()
        async with make_client(sink) as client:
            r = await client.post(
                "/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": sign(body)}
            )
        assert r.status_code == 503
        assert sink.calls == 1

    async def test_without_a_secret_unsigned_posts_are_accepted(self):
        sink = MemorySink()
        body = (CORPUS / "webhook_inbound_text__pywa.json").read_bytes()
        async with make_client(sink, app_secret=None) as client:
            r = await client.post("/webhooks/whatsapp", content=body)
        assert r.status_code == 200
        assert len(sink.messages) == 1

    async def test_oversized_body_is_refused_unread(self):
        sink = MemorySink()
        async with make_client(sink) as client:
            r = await client.post("/webhooks/whatsapp", content=b"x" * (8 * 1024 * 1024 + 1))
        assert r.status_code == 413
        assert sink.messages == []


class TestNoPhiInLogs:
    async def test_intake_logs_ids_only(self):
        from structlog.testing import capture_logs

        sink = MemorySink()
        bodies = [
            (CORPUS / name).read_bytes()
            for name in (
                "webhook_inbound_text__pywa.json",
                "webhook_inbound_template_quick_reply_button__metadocs.json",
                "webhook_status_failed_131049__metadocs.json",
            )
        ]
        with capture_logs() as logs:
            async with make_client(sink) as client:
                for body in bodies:
                    await client.post(
                        "/webhooks/whatsapp",
                        content=body,
                        headers={"X-Hub-Signature-256": sign(body)},
                    )
                await client.post("/webhooks/whatsapp", content=bodies[0])  # unsigned: 401
        text = repr(logs)
        assert logs  # something was logged
        for secret in (
            "972987654321",
            "16505551234",
            "Test Name",
            "Sheena",
            "Body Text",
            SECRET.decode(),
        ):
            assert secret not in text
