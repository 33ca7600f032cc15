"""Simulated patients and the control API: taps, list picks, texts, scripts, faults, reset."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.sandbox import SANDBOX_TOKEN, SandboxConfig, SandboxServer, create_app

CORPUS = Path("/work/shared/corpus/whatsapp")
PHONE_ID = SandboxConfig().phone_number_id
URL = f"/v21.0/{PHONE_ID}/messages"
PATIENT = "+573001230001"
PAYLOADS = {0: "tok-confirm-1", 1: "tok-resched-1", 2: "tok-cancel-1"}


def _corpus_message(name: str) -> dict[str, Any]:
    doc = json.loads((CORPUS / name).read_text())
    message: dict[str, Any] = doc["entry"][0]["changes"][0]["value"]["messages"][0]
    return message


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"}, timeout=10.0
    )


def _interactive_buttons() -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": PATIENT,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": "¿Desea hablar con alguien?"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": "help.yes", "title": "Sí"}},
                    {"type": "reply", "reply": {"id": "help.no", "title": "No"}},
                ]
            },
        },
    }


def _slots() -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": PATIENT,
        "type": "interactive",
        "interactive": {
            "type": "list",
            "body": {"text": "Elija un horario"},
            "action": {
                "button": "Horarios",
                "sections": [
                    {
                        "title": "Marzo",
                        "rows": [
                            {"id": "slot.a1", "title": "Lunes 9:00", "description": "Sede Norte"},
                            {"id": "slot.b2", "title": "Martes 11:00"},
                        ],
                    }
                ],
            },
        },
    }


class TestReplyEndToEnd:
    async def test_tap_confirm_sends_signed_button_webhook_with_our_payload_and_context(
        self, receiver, template_body
    ):
        config = SandboxConfig(port=0, webhook_url=receiver.url, seed=1, read_probability=0.0)
        async with SandboxServer(config) as server, _client(server.url) as client:
            # Given the bridge sent a reminder with its own payloads on the three buttons
            sent = await client.post(URL, json=template_body(payloads=PAYLOADS))
            wamid = sent.json()["messages"][0]["id"]

            # When the patient taps "confirm" through the control API
            resp = await client.post("/_sandbox/reply", json={"to": PATIENT, "button": "confirm"})
            await receiver.wait_for(lambda: len(receiver.messages()) == 1)

        # Then the bridge receives a signed type=button message with payload and context.id
        assert resp.status_code == 200
        [message] = receiver.messages()
        assert message["type"] == "button"
        assert message["button"] == {"payload": "tok-confirm-1", "text": "Confirmar"}
        assert message["context"] == {"from": config.display_phone_number, "id": wamid}
        assert message["from"] == "573001230001"
        assert set(message) == set(
            _corpus_message("webhook_inbound_template_quick_reply_button__pywa.json")
        )
        post = next(
            p for p in receiver.posts if p.body["entry"][0]["changes"][0]["value"].get("messages")
        )
        assert post.signature_ok
        [contact] = post.body["entry"][0]["changes"][0]["value"]["contacts"]
        assert contact["wa_id"] == "573001230001"
        assert contact["profile"] == {"name": config.patient_name}


@dataclass(frozen=True)
class TapCase:
    label: str
    language: str
    word: str
    payload: str
    text: str


TAPS = [
    TapCase("es confirm", "es", "confirm", "tok-confirm-1", "Confirmar"),
    TapCase("es reschedule by english word", "es", "reschedule", "tok-resched-1", "Reprogramar"),
    TapCase("es cancel", "es", "cancel", "tok-cancel-1", "Cancelar"),
    TapCase("en confirm", "en_US", "confirm", "tok-confirm-1", "Confirm"),
    TapCase("en reschedule", "en_US", "Reschedule", "tok-resched-1", "Reschedule"),
    TapCase("es spanish label", "es", "reprogramar", "tok-resched-1", "Reprogramar"),
    TapCase("by index", "en_US", "2", "tok-cancel-1", "Cancel"),
    TapCase("by payload", "es", "tok-cancel-1", "tok-cancel-1", "Cancelar"),
]


class TestButtonChoice:
    @pytest.mark.parametrize("case", TAPS, ids=lambda c: c.label)
    async def test_intent_word_picks_the_payload_the_bridge_sent(self, client, template_body, case):
        params = ["Ana", "12 March", "10:30", "North"]
        await client.post(
            URL, json=template_body(language=case.language, body_params=params, payloads=PAYLOADS)
        )

        resp = await client.post("/_sandbox/reply", json={"to": PATIENT, "button": case.word})

        assert resp.json()["message"]["button"] == {"payload": case.payload, "text": case.text}

    async def test_button_without_payload_echoes_its_label(self, client, template_body):
        await client.post(URL, json=template_body(payloads={0: "tok-confirm-1"}))

        resp = await client.post("/_sandbox/reply", json={"to": PATIENT, "button": "cancel"})

        assert resp.json()["message"]["button"] == {"payload": "Cancelar", "text": "Cancelar"}

    async def test_last_template_wins_unless_a_context_id_is_given(self, client, template_body):
        first = await client.post(URL, json=template_body(payloads={0: "tok-old"}))
        await client.post(URL, json=template_body(payloads={0: "tok-new"}))
        old_id = first.json()["messages"][0]["id"]

        latest = await client.post("/_sandbox/reply", json={"to": PATIENT, "button": "confirm"})
        older = await client.post(
            "/_sandbox/reply", json={"to": PATIENT, "button": "confirm", "context_id": old_id}
        )

        assert latest.json()["message"]["button"]["payload"] == "tok-new"
        assert older.json()["message"]["button"]["payload"] == "tok-old"
        assert older.json()["message"]["context"]["id"] == old_id

    async def test_interactive_tap_is_a_button_reply_shaped_like_the_corpus(self, client):
        sent = await client.post(URL, json=_interactive_buttons())

        resp = await client.post("/_sandbox/reply", json={"to": PATIENT, "button": "no"})

        message = resp.json()["message"]
        corpus = _corpus_message("webhook_inbound_interactive_button_reply__pywa.json")
        assert set(message) == set(corpus)
        assert message["interactive"] == {
            "type": "button_reply",
            "button_reply": {"id": "help.no", "title": "No"},
        }
        assert message["context"]["id"] == sent.json()["messages"][0]["id"]

    @pytest.mark.parametrize(
        ("row", "expected"),
        [
            ("slot.a1", {"id": "slot.a1", "title": "Lunes 9:00", "description": "Sede Norte"}),
            ("1", {"id": "slot.b2", "title": "Martes 11:00"}),
            ("martes 11:00", {"id": "slot.b2", "title": "Martes 11:00"}),
        ],
    )
    async def test_list_pick_is_a_list_reply_shaped_like_the_corpus(self, client, row, expected):
        await client.post(URL, json=_slots())

        resp = await client.post("/_sandbox/reply", json={"to": PATIENT, "list_row": row})

        message = resp.json()["message"]
        corpus = _corpus_message("webhook_inbound_interactive_list_reply__pywa.json")
        assert set(message) == set(corpus)
        assert message["interactive"] == {"type": "list_reply", "list_reply": expected}

    async def test_text_reply_is_shaped_like_the_corpus_and_opens_the_window(self, client):
        resp = await client.post("/_sandbox/reply", json={"to": PATIENT, "text": "no puedo ir"})

        message = resp.json()["message"]
        assert set(message) == set(_corpus_message("webhook_inbound_text__pywa.json"))
        assert message["text"] == {"body": "no puedo ir"}
        assert message["timestamp"].isdigit()
        assert client.sandbox._last_inbound["573001230001"] > 0

    @pytest.mark.parametrize(
        "body",
        [
            {"to": PATIENT, "button": "confirm"},
            {"to": PATIENT, "list_row": "slot.a1"},
            {"to": PATIENT, "button": "confirm", "text": "hola"},
            {"to": PATIENT},
            {"to": "nadie", "text": "hola"},
            {"button": "confirm"},
            {"to": PATIENT, "button": 3},
            {"to": PATIENT, "text": "x", "context_id": "wamid.unknown"},
        ],
        ids=[
            "nothing sent yet",
            "no list sent",
            "two kinds",
            "no kind",
            "no digits",
            "no to",
            "button not a string",
            "unknown context",
        ],
    )
    async def test_impossible_replies_get_400_with_a_reason(self, client, body):
        resp = await client.post("/_sandbox/reply", json=body)

        assert resp.status_code == 400
        assert resp.json()["error"]

    async def test_unknown_button_word_is_refused(self, client, template_body):
        await client.post(URL, json=template_body(payloads=PAYLOADS))

        resp = await client.post("/_sandbox/reply", json={"to": PATIENT, "button": "maybe"})

        assert resp.status_code == 400


class TestScripts:
    async def test_scripted_patient_taps_after_the_reminder_arrives(
        self, make_client, receiver, template_body
    ):
        client = make_client(webhook_url=receiver.url, read_probability=0.0)
        await client.post(
            "/_sandbox/scripts",
            json={
                "scripts": [
                    {
                        "to": PATIENT,
                        "on": "appointment_reminder",
                        "button": "cancel",
                        "delay_ms": 20,
                    }
                ]
            },
        )

        sent = await client.post(URL, json=template_body(payloads=PAYLOADS))
        await receiver.wait_for(lambda: len(receiver.messages()) == 1)

        [message] = receiver.messages()
        assert message["button"]["payload"] == "tok-cancel-1"
        assert message["context"]["id"] == sent.json()["messages"][0]["id"]

    async def test_once_script_fires_once_and_other_templates_do_not_trigger_it(
        self, make_client, template_body
    ):
        client = make_client()
        await client.post(
            "/_sandbox/scripts",
            json={"scripts": [{"on": "appointment_reminder", "text": "ok", "once": True}]},
        )

        await client.post(
            URL,
            json=template_body(name="appointment_confirmed", body_params=["12 de marzo", "10:30"]),
        )
        await client.post(URL, json=template_body())
        await client.post(URL, json=template_body())

        assert client.sandbox.stats.inbound_scheduled == 1
        assert (await client.get("/_sandbox/scripts")).json() == {"scripts": []}

    async def test_scripts_from_config_apply_to_every_number(self, make_client, template_body):
        from bridge.sandbox import PatientScript

        client = make_client(scripts=(PatientScript(button="confirm", delay_ms=0),))

        await client.post(URL, json=template_body(to="+573001230007", payloads=PAYLOADS))
        await client.post(URL, json=template_body(to="+573001230008", payloads=PAYLOADS))

        assert client.sandbox.stats.inbound_scheduled == 2

    @pytest.mark.parametrize(
        "script",
        [{"button": "confirm", "text": "x"}, {"delay_ms": 5}, {"button": "x", "colour": "red"}],
        ids=["two kinds", "no kind", "unknown field"],
    )
    async def test_invalid_scripts_are_refused(self, client, script):
        resp = await client.post("/_sandbox/scripts", json={"scripts": [script]})

        assert resp.status_code == 400


class TestControlApi:
    async def test_control_api_refuses_non_loopback_clients_but_graph_still_answers(
        self, template_body
    ):
        app = create_app(SandboxConfig())
        transport = httpx.ASGITransport(app=app, client=("10.20.30.40", 5000))
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://sandbox.test",
            headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"},
        ) as client:
            control = await client.get("/_sandbox/messages")
            graph = await client.post(URL, json=template_body())
        await app.state.sandbox.aclose()

        assert control.status_code == 403
        assert graph.status_code == 200

    async def test_reset_forgets_messages_counters_scripts_and_faults(self, client, template_body):
        await client.post(URL, json=template_body())
        await client.post("/_sandbox/scripts", json={"scripts": [{"text": "hola"}]})
        await client.post("/_sandbox/faults", json={"status_5xx_rate": 0.5})

        await client.post("/_sandbox/reset")

        assert (await client.get("/_sandbox/messages")).json() == {"data": []}
        stats = (await client.get("/_sandbox/stats")).json()
        assert stats["accepted"] == 0
        assert (await client.get("/_sandbox/scripts")).json() == {"scripts": []}
        assert (await client.get("/_sandbox/faults")).json()["status_5xx_rate"] == 0.0

    async def test_messages_filter_by_number(self, client, template_body):
        await client.post(URL, json=template_body(to="+573001230011"))
        await client.post(URL, json=template_body(to="+573001230012"))

        only = (await client.get("/_sandbox/messages", params={"to": "+573001230012"})).json()

        assert [m["wa_id"] for m in only["data"]] == ["573001230012"]

    async def test_posted_webhooks_are_listed(self, make_client, receiver, template_body):
        client = make_client(webhook_url=receiver.url, sent_delay_ms=0, read_probability=0.0)
        await client.post(URL, json=template_body())

        drained = (await client.post("/_sandbox/drain", params={"timeout": "5"})).json()
        listed = (await client.get("/_sandbox/webhooks")).json()["data"]

        assert drained == {"drained": True, "pending": 0}
        assert [b["entry"][0]["changes"][0]["value"]["statuses"][0]["status"] for b in listed] == [
            "sent",
            "delivered",
        ]


class TestFaults:
    async def test_429_fault_answers_http_429_and_accepts_nothing(self, template_body):
        async with SandboxServer(SandboxConfig(port=0)) as server, _client(server.url) as client:
            await client.post("/_sandbox/faults", json={"status_429_rate": 1.0})
            resp = await client.post(URL, json=template_body())
            stats = (await client.get("/_sandbox/stats")).json()

        assert resp.status_code == 429
        assert resp.json()["error"]["code"] == 130429
        assert stats["accepted"] == 0
        assert stats["faults"] == {"status_429": 1}

    async def test_5xx_faults_mix_graph_json_and_a_plain_bad_gateway(self, template_body):
        async with (
            SandboxServer(SandboxConfig(port=0, seed=5)) as server,
            _client(server.url) as client,
        ):
            await client.post("/_sandbox/faults", json={"status_5xx_rate": 1.0, "seed": 5})
            responses = [await client.post(URL, json=template_body()) for _ in range(30)]

        codes = {r.status_code for r in responses}
        assert codes == {500, 502, 503}
        bad_gateway = next(r for r in responses if r.status_code == 502)
        assert bad_gateway.text == "Bad Gateway"
        graph = next(r for r in responses if r.status_code == 503)
        assert graph.json()["error"]["code"] == 2

    async def test_timeout_fault_holds_the_request_past_the_clients_limit(self, template_body):
        async with SandboxServer(SandboxConfig(port=0)) as server, _client(server.url) as client:
            await client.post(
                "/_sandbox/faults", json={"timeout_rate": 1.0, "timeout_seconds": 2.0}
            )
            with pytest.raises(httpx.ReadTimeout):
                await client.post(URL, json=template_body(), timeout=0.2)
            await client.post("/_sandbox/faults", json={})
            log = (await client.get("/_sandbox/messages")).json()["data"]

        assert log == []

    async def test_reset_fault_drops_the_connection_mid_answer(self, template_body):
        async with SandboxServer(SandboxConfig(port=0)) as server, _client(server.url) as client:
            await client.post("/_sandbox/faults", json={"reset_rate": 1.0})
            with pytest.raises(httpx.TransportError):
                await client.post(URL, json=template_body())
            await client.post("/_sandbox/faults", json={})
            after = await client.post(URL, json=template_body())

        assert after.status_code == 200

    async def test_seeded_fault_mix_is_repeatable_and_near_the_rates(
        self, make_client, template_body
    ):
        async def run() -> list[int]:
            client = make_client(rate_per_second=1000)
            await client.post(
                "/_sandbox/faults",
                json={"status_429_rate": 0.2, "status_5xx_rate": 0.2, "seed": 11},
            )
            return [
                (await client.post(URL, json=template_body(to=f"+57300123{i:04d}"))).status_code
                for i in range(200)
            ]

        first, second = await run(), await run()

        assert first == second
        faulted = sum(1 for s in first if s != 200)
        assert 50 <= faulted <= 110

    @pytest.mark.parametrize(
        "body",
        [{"status_429_rate": 1.5}, {"status_429_rate": 0.6, "reset_rate": 0.6}, {"bogus": 1}],
        ids=["rate over 1", "rates add over 1", "unknown setting"],
    )
    async def test_invalid_fault_settings_are_refused(self, client, body):
        resp = await client.post("/_sandbox/faults", json=body)

        assert resp.status_code == 400


class TestSandboxServer:
    async def test_server_picks_a_port_and_frees_it_on_exit_without_touching_signals(self):
        handler_before = signal.getsignal(signal.SIGINT)
        async with SandboxServer(SandboxConfig(port=0)) as server:
            port = int(server.url.rsplit(":", 1)[1])
            assert port > 0
            async with _client(server.url) as client:
                assert (await client.get("/_sandbox/stats")).status_code == 200
            assert signal.getsignal(signal.SIGINT) is handler_before

        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()

    async def test_a_busy_port_fails_at_start(self):
        async with SandboxServer(SandboxConfig(port=0)) as first:
            port = int(first.url.rsplit(":", 1)[1])
            with pytest.raises(OSError):
                async with SandboxServer(SandboxConfig(port=port)):
                    pass

    async def test_stop_finishes_while_a_timeout_fault_is_holding_a_request(self, template_body):
        async with SandboxServer(SandboxConfig(port=0)) as server, _client(server.url) as client:
            await client.post(
                "/_sandbox/faults", json={"timeout_rate": 1.0, "timeout_seconds": 30.0}
            )
            pending = asyncio.create_task(client.post(URL, json=template_body()))
            await asyncio.sleep(0.1)
            async with asyncio.timeout(5):
                await server.stop()
            pending.cancel()
            with pytest.raises((asyncio.CancelledError, httpx.TransportError)):
                await pending


class TestConfigChecks:
    @pytest.mark.parametrize(
        "overrides",
        [
            {"rate_per_second": 0},
            {"pair_burst": 0},
            {"duplicate_probability": 1.5},
            {"batch_max": 1001},
            {"message_log_size": 0},
        ],
        ids=lambda o: next(iter(o)),
    )
    def test_impossible_settings_are_refused_at_construction(self, overrides):
        with pytest.raises(ValueError, match=next(iter(overrides))):
            SandboxConfig(**overrides)

    async def test_message_log_is_bounded_and_forgets_the_oldest(self, make_client, template_body):
        client = make_client(message_log_size=2)
        ids = []
        for i in range(3):
            resp = await client.post(URL, json=template_body(to=f"+57300123{i:04d}"))
            ids.append(resp.json()["messages"][0]["id"])

        log = (await client.get("/_sandbox/messages")).json()["data"]
        stale = await client.post(
            "/_sandbox/reply",
            json={"to": "+573001230000", "button": "confirm", "context_id": ids[0]},
        )

        assert [m["id"] for m in log] == ids[1:]
        assert stale.status_code == 400
        assert client.sandbox.stats.accepted == 3
