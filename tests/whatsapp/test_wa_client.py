"""GraphClient against a fake Graph API: exact requests, scripted faults, paging."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.errors import (
    ChannelConfigInvalid,
    ChannelThrottled,
    ChannelUnavailable,
    MessageRejected,
    RecipientUnreachable,
)
from bridge.ports import Notification, SendReceipt
from bridge.whatsapp._client import GraphClient

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "whatsapp"
TOKEN = "test-token"
TO = "+573001230001"


def client_for(fake_graph: Any, **kwargs: Any) -> GraphClient:
    kwargs.setdefault("transport", httpx.ASGITransport(app=fake_graph))
    base_url = kwargs.pop("base_url", "http://graph.test")
    return GraphClient(
        base_url,
        "v25.0",
        "109876543210987",
        "102345678901234",
        TOKEN,
        timeout=kwargs.pop("timeout", 2.0),
        **kwargs,
    )


def text(outbox_id: int = 7, body: str = "Hola") -> Notification:
    return Notification(outbox_id=outbox_id, to=TO, kind="text", content={"body": body})


def graph_error(code: int) -> dict[str, Any]:
    return {
        "error": {
            "message": f"(#{code}) x",
            "type": "OAuthException",
            "code": code,
            "fbtrace_id": "AbC",
        }
    }


class TestSend:
    async def test_send_posts_the_exact_body_and_returns_the_receipt(self, fake_graph):
        async with client_for(fake_graph) as client:
            receipt = await client.send(text())

        assert receipt == SendReceipt(
            message_id="wamid.fake1", accepted_status="accepted", recipient_id="573001230001"
        )
        (seen,) = fake_graph.requests
        assert (seen.method, seen.path) == ("POST", "/v25.0/109876543210987/messages")
        assert seen.headers["authorization"] == f"Bearer {TOKEN}"
        assert seen.headers["content-type"] == "application/json"
        assert seen.json == {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": TO,
            "type": "text",
            "text": {"body": "Hola"},
            "biz_opaque_callback_data": "7",
        }
        assert fake_graph.unused() == []

    async def test_corpus_success_without_message_status_is_accepted(self, fake_graph):
        body = json.loads((CORPUS / "send_response_interactive__metadocs.json").read_text())
        fake_graph.respond(201, body)
        async with client_for(fake_graph) as client:
            receipt = await client.send(text())
        assert receipt.message_id.startswith("wamid.HBgLMTY0")
        assert receipt.recipient_id == "16505551234"
        assert fake_graph.unused() == []

    async def test_limit_breach_sends_nothing(self, fake_graph):
        async with client_for(fake_graph) as client:
            with pytest.raises(MessageRejected, match=r"text\.body"):
                await client.send(text(body="x" * 5000))
        assert fake_graph.requests == []

    @pytest.mark.parametrize(
        ("status", "body", "error", "code"),
        [
            (400, graph_error(130429), ChannelThrottled, 130429),
            (400, graph_error(131026), RecipientUnreachable, 131026),
            (401, graph_error(190), ChannelConfigInvalid, 190),
            (404, graph_error(132001), MessageRejected, 132001),
            (429, b"too many", ChannelThrottled, None),
            (400, b"<html>", MessageRejected, None),
        ],
        ids=["throughput", "undeliverable", "token", "template", "bare 429", "garbage 400"],
    )
    async def test_graph_errors_map_to_typed_errors_without_retrying(
        self, fake_graph, status, body, error, code
    ):
        fake_graph.respond(status, body)
        async with client_for(fake_graph) as client:
            with pytest.raises(error) as info:
                await client.send(text())
        assert info.value.provider_code == code
        assert len(fake_graph.requests) == 1
        assert fake_graph.unused() == []

    async def test_5xx_is_retried_and_then_succeeds(self, fake_graph):
        fake_graph.respond(500, b"Bad Gateway")
        fake_graph.respond(503, graph_error(2), headers={"Retry-After": "0"})
        async with client_for(fake_graph) as client:
            receipt = await client.send(text())
        assert receipt.message_id == "wamid.fake1"
        assert len(fake_graph.requests) == 3
        assert fake_graph.requests[0].body == fake_graph.requests[2].body
        assert fake_graph.unused() == []

    async def test_persistent_5xx_gives_up_after_the_configured_attempts(self, fake_graph):
        fake_graph.respond(502, b"Bad Gateway", times=3)
        async with client_for(fake_graph, attempts=3) as client:
            with pytest.raises(ChannelUnavailable) as info:
                await client.send(text())
        assert info.value.retryable
        assert len(fake_graph.requests) == 3
        assert fake_graph.unused() == []

    async def test_long_retry_after_is_left_to_the_outbox(self, fake_graph):
        fake_graph.respond(503, b"down", headers={"Retry-After": "120"})
        async with client_for(fake_graph) as client:
            with pytest.raises(ChannelUnavailable) as info:
                await client.send(text())
        assert info.value.retry_after == 120.0
        assert len(fake_graph.requests) == 1

    async def test_2xx_without_wamid_is_retryable_not_lost(self, fake_graph):
        fake_graph.respond(200, {"messaging_product": "whatsapp"})
        async with client_for(fake_graph) as client:
            with pytest.raises(ChannelUnavailable, match="unparseable_success"):
                await client.send(text())

    async def test_mark_read(self, fake_graph):
        async with client_for(fake_graph) as client:
            await client.mark_read("wamid.in1")
        (seen,) = fake_graph.requests
        assert seen.json == {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.in1",
        }


class TestOverLoopback:
    async def test_timeout_is_retried_over_real_http(self, fake_graph, graph_url):
        # Given a Graph that stalls once past our timeout, then answers
        fake_graph.respond(200, delay=1.0)
        fake_graph.respond(200)
        async with asyncio.timeout(10):
            async with client_for(
                fake_graph, base_url=graph_url, transport=None, timeout=0.3
            ) as client:
                # When we send
                receipt = await client.send(text())
        # Then the second try's wamid comes back and every scripted answer was used
        assert receipt.message_id.startswith("wamid.fake")
        assert len(fake_graph.requests) == 2
        assert fake_graph.unused() == []

    async def test_connect_error_is_unavailable_after_retries(self):
        # A port nothing listens on: bind, note it, close.
        import socket

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        async with asyncio.timeout(10):
            async with GraphClient(
                f"http://127.0.0.1:{port}", "v25.0", "1", "2", TOKEN, timeout=0.5, attempts=2
            ) as client:
                with pytest.raises(ChannelUnavailable) as info:
                    await client.send(text())
        assert info.value.code in ("connect_error", "timeout")

    async def test_scripted_faults_end_with_every_message_sent_once(self, fake_graph, graph_url):
        """429s go back to the caller; 5xx and timeouts are retried in-process; none is lost."""
        fake_graph.respond(500, b"x")
        fake_graph.respond(200, delay=1.0)
        fake_graph.respond(429, graph_error(130429), headers={"Retry-After": "0"})
        sent: dict[int, str] = {}
        async with client_for(
            fake_graph, base_url=graph_url, transport=None, timeout=0.3
        ) as client:
            pending = list(range(1, 11))
            async with asyncio.timeout(20):
                while pending:
                    outbox_id = pending.pop(0)
                    try:
                        receipt = await client.send(text(outbox_id))
                    except ChannelThrottled:
                        pending.append(outbox_id)  # the outbox would retry it later
                        continue
                    sent[outbox_id] = receipt.message_id
        assert sorted(sent) == list(range(1, 11))
        assert len(set(sent.values())) == 10
        assert fake_graph.unused() == []


class TestTemplates:
    async def test_list_templates_follows_paging_with_our_base_url(self, fake_graph):
        first = json.loads((CORPUS / "template_list_response_paging__metadocs.json").read_text())
        last = {
            "data": [{"name": "appointment_reminder", "status": "APPROVED", "id": "9"}],
            "paging": {"cursors": {"before": "X", "after": "Y"}},
        }
        fake_graph.respond(200, first)
        fake_graph.respond(200, last)
        async with client_for(fake_graph) as client:
            templates = await client.list_templates(limit=3)
        assert [t["name"] for t in templates] == [
            "seasonal_promotion_text_only",
            "seasonal_promotion_video",
            "seasonal_promotion_image_header",
            "appointment_reminder",
        ]
        first_req, second_req = fake_graph.requests
        assert first_req.path == "/v25.0/102345678901234/message_templates"
        assert first_req.query["limit"] == ["3"]
        # graph.facebook.com is not our base URL: the token never goes there; the cursor does.
        assert second_req.path == "/v25.0/102345678901234/message_templates"
        assert second_req.query["after"] == ["MgZDZD"]
        assert fake_graph.unused() == []

    async def test_same_origin_next_is_followed_as_is(self, fake_graph):
        fake_graph.respond(
            200,
            {
                "data": [{"name": "a"}],
                "paging": {
                    "next": "http://graph.test/v25.0/102345678901234/message_templates?after=Q&limit=1"
                },
            },
        )
        fake_graph.respond(200, {"data": [{"name": "b"}], "paging": {}})
        async with client_for(fake_graph) as client:
            templates = await client.list_templates()
        assert [t["name"] for t in templates] == ["a", "b"]
        assert fake_graph.requests[1].query == {"after": ["Q"], "limit": ["1"]}

    async def test_template_page_without_data_is_rejected(self, fake_graph):
        fake_graph.respond(200, {"oops": 1})
        async with client_for(fake_graph) as client:
            with pytest.raises(MessageRejected):
                await client.list_templates()
