"""Status webhooks reach the bridge signed, shaped like Meta's, with Meta's disorder when asked."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bridge.sandbox import SANDBOX_APP_SECRET, SandboxConfig

CORPUS = Path("/work/shared/corpus/whatsapp")
PHONE_ID = SandboxConfig().phone_number_id
FAST = {"sent_delay_ms": 0, "delivered_delay_ms": 10, "read_delay_ms": 20}
ORDER = {"sent": 0, "delivered": 1, "read": 2}


def _corpus(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((CORPUS / name).read_text())
    return doc


async def _send(client: Any, body: dict[str, Any], version: str = "v21.0") -> str:
    resp = await client.post(f"/{version}/{PHONE_ID}/messages", json=body)
    assert resp.status_code == 200, resp.text
    wamid: str = resp.json()["messages"][0]["id"]
    return wamid


def _by_wamid(statuses: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in statuses:
        out[s["id"]].append(s)
    return out


class TestSignedDelivery:
    async def test_every_accepted_message_gets_sent_delivered_and_read(
        self, make_client, receiver, template_body
    ):
        client = make_client(webhook_url=receiver.url, **FAST)
        wamids = [
            await _send(client, template_body(to=f"+5730012301{i:02d}", callback=f"row-{i}"))
            for i in range(10)
        ]

        await receiver.wait_for(lambda: len(receiver.statuses()) == 30)

        by_id = _by_wamid(receiver.statuses())
        assert set(by_id) == set(wamids)
        for i, wamid in enumerate(wamids):
            items = by_id[wamid]
            assert sorted(s["status"] for s in items) == ["delivered", "read", "sent"]
            assert {s["biz_opaque_callback_data"] for s in items} == {f"row-{i}"}
            assert {s["recipient_id"] for s in items} == {f"5730012301{i:02d}"}
        assert all(p.signature_ok for p in receiver.posts)

    async def test_signature_covers_the_raw_bytes_not_reserialised_json(
        self, make_client, receiver, template_body
    ):
        # Given a body with non-ASCII text and a slash, which Meta escapes as \\uXXXX and \\/
        client = make_client(webhook_url=receiver.url, patient_name="José Ñandú", **FAST)
        await _send(client, template_body(callback="row/1"))

        # When the sent status arrives
        await receiver.wait_for(lambda: len(receiver.posts) >= 1)

        # Then the signature verifies over the raw body only
        post = receiver.posts[0]
        assert post.signature_ok
        assert b"\\/" in post.raw
        assert b"\\u00d1" in post.raw.lower()
        reserialised = json.dumps(post.body).encode()
        digest = hmac.new(SANDBOX_APP_SECRET.encode(), reserialised, hashlib.sha256).hexdigest()
        assert post.signature != f"sha256={digest}"
        assert post.body["entry"][0]["changes"][0]["value"]["contacts"][0]["profile"] == {
            "name": "José Ñandú"
        }

    async def test_a_receiver_with_another_secret_sees_bad_signatures(
        self, make_client, receiver, template_body
    ):
        client = make_client(
            webhook_url=receiver.url, app_secret="other-secret", webhook_max_attempts=2, **FAST
        )
        receiver.app_secret = "bridge-secret"
        await _send(client, template_body())

        await client.sandbox.webhooks.drain(5)

        # The receiver answered 401, so the sandbox retried and finally gave up.
        assert receiver.posts
        assert not any(p.signature_ok for p in receiver.posts)


class TestStatusShapes:
    async def test_body_keys_match_the_corpus_sent_status(
        self, make_client, receiver, template_body
    ):
        corpus = _corpus("webhook_status_sent_biz_opaque_callback_data__pywa.json")
        client = make_client(webhook_url=receiver.url, read_probability=0.0, **FAST)
        await _send(client, template_body(callback="row-1"))

        await receiver.wait_for(lambda: len(receiver.statuses()) == 2)

        sent_post = next(
            p.body
            for p in receiver.posts
            if p.body["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] == "sent"
        )
        assert set(sent_post) == set(corpus)
        entry, corpus_entry = sent_post["entry"][0], corpus["entry"][0]
        assert entry["id"] == SandboxConfig().waba_id
        assert set(entry) == set(corpus_entry)
        change = entry["changes"][0]
        assert change["field"] == "messages"
        value, corpus_value = change["value"], corpus_entry["changes"][0]["value"]
        assert set(value) == set(corpus_value)
        assert value["metadata"] == {
            "display_phone_number": SandboxConfig().display_phone_number,
            "phone_number_id": PHONE_ID,
        }
        status, corpus_status = value["statuses"][0], corpus_value["statuses"][0]
        assert set(status) == set(corpus_status)
        assert set(status["conversation"]) == set(corpus_status["conversation"])
        pmp = _corpus("webhook_status_sent_pmp_marketing__metadocs.json")
        pmp_pricing = pmp["entry"][0]["changes"][0]["value"]["statuses"][0]["pricing"]
        assert set(status["pricing"]) == set(pmp_pricing)
        assert status["pricing"]["category"] == "utility"
        assert status["timestamp"].isdigit()

    async def test_pricing_on_sent_and_delivered_only_and_expiry_only_on_sent(
        self, make_client, receiver, template_body
    ):
        client = make_client(webhook_url=receiver.url, **FAST)
        await _send(client, template_body())

        await receiver.wait_for(lambda: len(receiver.statuses()) == 3)

        by_status = {s["status"]: s for s in receiver.statuses()}
        assert "pricing" in by_status["sent"]
        assert "pricing" in by_status["delivered"]
        assert "pricing" not in by_status["read"]
        assert "expiration_timestamp" in by_status["sent"]["conversation"]
        assert "expiration_timestamp" not in by_status["delivered"]["conversation"]

    async def test_from_v24_on_statuses_carry_no_conversation(
        self, make_client, receiver, template_body
    ):
        client = make_client(webhook_url=receiver.url, **FAST)
        await _send(client, template_body(), version="v25.0")

        await receiver.wait_for(lambda: len(receiver.statuses()) == 3)

        assert not any("conversation" in s for s in receiver.statuses())

    async def test_undeliverable_number_is_accepted_then_fails_with_131026(
        self, make_client, receiver, template_body
    ):
        corpus = _corpus("webhook_status_failed_131049__metadocs.json")
        corpus_status = corpus["entry"][0]["changes"][0]["value"]["statuses"][0]
        client = make_client(
            webhook_url=receiver.url, undeliverable=frozenset({"+573001239999"}), **FAST
        )

        wamid = await _send(client, template_body(to="+57 300 123 9999"))
        await client.sandbox.webhooks.drain(5)

        [status] = receiver.statuses()
        assert status["id"] == wamid
        assert status["status"] == "failed"
        assert set(status) == set(corpus_status)
        assert set(status["errors"][0]) == set(corpus_status["errors"][0])
        assert status["errors"][0]["code"] == 131026

    async def test_free_form_outside_the_window_fails_with_131047_and_inside_is_delivered(
        self, make_client, receiver
    ):
        client = make_client(webhook_url=receiver.url, **FAST)
        text = {"messaging_product": "whatsapp", "to": "+573001230001", "type": "text"}

        before = await _send(client, text | {"text": {"body": "Hola"}})
        client.sandbox.reply("+573001230001", text="hola")
        after = await _send(client, text | {"text": {"body": "Gracias"}})
        await client.sandbox.webhooks.drain(5)

        by_id = _by_wamid(receiver.statuses())
        assert [s["status"] for s in by_id[before]] == ["failed"]
        assert by_id[before][0]["errors"][0]["code"] == 131047
        assert sorted(s["status"] for s in by_id[after]) == ["delivered", "read", "sent"]
        assert by_id[after][0]["pricing"]["category"] == "service"


class TestMetasDisorder:
    async def test_duplicates_happen_when_configured(self, make_client, receiver, template_body):
        client = make_client(webhook_url=receiver.url, duplicate_probability=1.0, **FAST)
        for i in range(3):
            await _send(client, template_body(to=f"+5730012302{i:02d}"))

        await client.sandbox.webhooks.drain(5)

        counts = Counter((s["id"], s["status"]) for s in receiver.statuses())
        assert len(counts) == 9
        assert set(counts.values()) == {2}

    async def test_reordering_delivers_later_statuses_first_with_true_timestamps(
        self, make_client, receiver, template_body
    ):
        client = make_client(
            webhook_url=receiver.url,
            reorder_probability=1.0,
            sent_delay_ms=0,
            delivered_delay_ms=100,
            read_delay_ms=200,
        )
        wamids = [await _send(client, template_body(to=f"+5730012303{i:02d}")) for i in range(5)]

        await client.sandbox.webhooks.drain(5)

        by_id = _by_wamid(receiver.statuses())
        for wamid in wamids:
            arrival = [ORDER[s["status"]] for s in by_id[wamid]]
            assert sorted(arrival) == [0, 1, 2]
            assert arrival != [0, 1, 2]

    async def test_no_disorder_by_default(self, make_client, receiver, template_body):
        client = make_client(
            webhook_url=receiver.url, sent_delay_ms=0, delivered_delay_ms=100, read_delay_ms=200
        )
        for i in range(5):
            await _send(client, template_body(to=f"+5730012304{i:02d}"))

        await client.sandbox.webhooks.drain(5)

        for items in _by_wamid(receiver.statuses()).values():
            assert [s["status"] for s in items] == ["sent", "delivered", "read"]

    async def test_batching_puts_several_statuses_in_one_post(
        self, make_client, receiver, template_body
    ):
        client = make_client(
            webhook_url=receiver.url,
            batch_max=50,
            batch_window_ms=100,
            sent_delay_ms=0,
            delivered_delay_ms=0,
            read_delay_ms=0,
        )
        for i in range(10):
            await _send(client, template_body(to=f"+5730012305{i:02d}"))

        await client.sandbox.webhooks.drain(5)

        assert len(receiver.statuses()) == 30
        assert len(receiver.posts) < 30
        biggest = max(
            receiver.posts, key=lambda p: len(p.body["entry"][0]["changes"][0]["value"]["statuses"])
        )
        value = biggest.body["entry"][0]["changes"][0]["value"]
        assert len(value["statuses"]) > 1
        assert len(value["contacts"]) == len({c["wa_id"] for c in value["contacts"]})


class TestRetries:
    async def test_non_200_answers_are_retried_until_accepted(
        self, make_client, receiver, template_body
    ):
        receiver.script = [500, 503, 404]
        client = make_client(
            webhook_url=receiver.url, read_probability=0.0, webhook_retry_base_ms=10, **FAST
        )
        await _send(client, template_body())

        assert await client.sandbox.webhooks.drain(5)

        assert sorted(s["status"] for s in receiver.statuses()) == ["delivered", "sent"]
        stats = client.sandbox.stats
        assert stats.webhook_retries == 3
        assert receiver.attempts == len(receiver.posts) + 3
        assert stats.webhook_updates_failed == 0

    async def test_retries_are_bounded_then_counted_as_failed(
        self, make_client, receiver, template_body
    ):
        receiver.script = [500] * 100
        client = make_client(
            webhook_url=receiver.url,
            read_probability=0.0,
            webhook_max_attempts=3,
            webhook_retry_base_ms=5,
            **FAST,
        )
        await _send(client, template_body())

        assert await client.sandbox.webhooks.drain(5)

        assert receiver.attempts == 2 * 3
        assert client.sandbox.stats.webhook_updates_failed == 2
        assert receiver.posts == []

    async def test_unreachable_receiver_is_retried_and_given_up(self, make_client, template_body):
        client = make_client(
            webhook_url="http://127.0.0.1:9/webhooks/whatsapp",
            read_probability=0.0,
            webhook_max_attempts=2,
            webhook_retry_base_ms=5,
            **FAST,
        )
        await _send(client, template_body())

        assert await client.sandbox.webhooks.drain(5)

        assert client.sandbox.stats.webhook_retries == 2
        assert client.sandbox.stats.webhook_updates_failed == 2


class TestQueueBound:
    async def test_a_full_queue_drops_and_counts_instead_of_growing(
        self, make_client, receiver, template_body
    ):
        client = make_client(
            webhook_url=receiver.url,
            max_pending_webhooks=4,
            sent_delay_ms=5000,
            delivered_delay_ms=5000,
            read_delay_ms=5000,
        )
        for i in range(3):
            await _send(client, template_body(to=f"+5730012306{i:02d}"))

        stats = (await client.get("/_sandbox/stats")).json()

        assert stats["webhooks_pending"] == 4
        assert stats["webhook_updates_dropped"] == 5

    async def test_without_a_webhook_url_sends_work_and_nothing_is_queued(
        self, make_client, template_body
    ):
        client = make_client(webhook_url=None)

        await _send(client, template_body())

        assert client.sandbox.webhooks.pending == 0
        assert client.sandbox.stats.accepted == 1
