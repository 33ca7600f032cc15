"""The send endpoint answers like Meta's Graph API: shapes, validation codes, auth."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.sandbox import SandboxConfig

CORPUS = Path("/work/shared/corpus/whatsapp")
PHONE_ID = SandboxConfig().phone_number_id
URL = f"/v21.0/{PHONE_ID}/messages"
PATIENT = "+573001230001"


def _reminder(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": PATIENT,
        "type": "template",
        "template": {
            "name": "appointment_reminder",
            "language": {"code": "es"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": t}
                        for t in ("Ana", "12 de marzo", "10:30", "Sede Norte")
                    ],
                },
                {
                    "type": "button",
                    "sub_type": "quick_reply",
                    "index": "0",
                    "parameters": [{"type": "payload", "payload": "tok-1"}],
                },
            ],
        },
    }
    body.update(changes)
    return body


def _with(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a copy of body with the dotted path set (list indexes as numbers)."""
    out = copy.deepcopy(body)
    node: Any = out
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


def _text(body: str = "Hola") -> dict[str, Any]:
    return {"messaging_product": "whatsapp", "to": PATIENT, "type": "text", "text": {"body": body}}


def _buttons(*titles: str, ids: list[str] | None = None) -> dict[str, Any]:
    ids = ids or [f"b{i}" for i in range(len(titles))]
    return {
        "messaging_product": "whatsapp",
        "to": PATIENT,
        "type": "interactive",
        "interactive": {
            "type": "button",
            "body": {"text": "¿Qué desea hacer?"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": i, "title": t}}
                    for i, t in zip(ids, titles, strict=True)
                ]
            },
        },
    }


def _list(rows: int = 3, **row_overrides: Any) -> dict[str, Any]:
    row_list = [{"id": f"slot.{i}", "title": f"Lunes {i}:00"} for i in range(rows)]
    row_list[0].update(row_overrides)
    return {
        "messaging_product": "whatsapp",
        "to": PATIENT,
        "type": "interactive",
        "interactive": {
            "type": "list",
            "body": {"text": "Elija un horario"},
            "action": {"button": "Horarios", "sections": [{"title": "Marzo", "rows": row_list}]},
        },
    }


@dataclass(frozen=True)
class RefusalCase:
    label: str
    body: Any
    code: int
    detail: str = ""
    status: int = 400


REFUSALS = [
    RefusalCase("unknown template", _with(_reminder(), "template.name", "nope"), 132001, "nope"),
    RefusalCase(
        "language en is not en_US",
        _with(_reminder(), "template.language.code", "en"),
        132001,
        "does not exist in en",
    ),
    RefusalCase(
        "body with three of four parameters",
        _with(
            _reminder(),
            "template.components.0.parameters",
            [{"type": "text", "text": "x"}] * 3,
        ),
        132000,
        "localizable_params (3)",
    ),
    RefusalCase(
        "body missing entirely",
        _with(_reminder(), "template.components", []),
        132000,
        "expected number of params (4)",
    ),
    RefusalCase(
        "empty parameter",
        _with(_reminder(), "template.components.0.parameters.0", {"type": "text", "text": ""}),
        131008,
    ),
    RefusalCase(
        "parameter with a new line",
        _with(_reminder(), "template.components.0.parameters.0", {"type": "text", "text": "a\nb"}),
        132018,
        "new-line",
    ),
    RefusalCase(
        "rendered body over 1024",
        _with(
            _reminder(), "template.components.0.parameters.3", {"type": "text", "text": "x" * 1100}
        ),
        132005,
        "1024",
    ),
    RefusalCase(
        "button index past the template's buttons",
        _with(_reminder(), "template.components.1.index", "7"),
        131009,
        "index 7",
    ),
    RefusalCase(
        "url sub_type on a quick-reply button",
        _with(_reminder(), "template.components.1.sub_type", "url"),
        132012,
    ),
    RefusalCase("to without digits", _reminder(to="paciente"), 131009, "phone number"),
    RefusalCase("to missing", {k: v for k, v in _text().items() if k != "to"}, 100, "to"),
    RefusalCase("wrong messaging_product", _text() | {"messaging_product": "sms"}, 100),
    RefusalCase("text over 4096", _text("x" * 4097), 100, "4096"),
    RefusalCase(
        "callback data over 512",
        _reminder(biz_opaque_callback_data="x" * 513),
        131009,
        "512",
    ),
    RefusalCase("four reply buttons", _buttons("a", "b", "c", "d"), 131009, "1 to 3"),
    RefusalCase("button title over 20", _buttons("x" * 21), 131009, "20"),
    RefusalCase(
        "button ids equal but for trailing space",
        _buttons("a", "b", ids=["1:", "1: "]),
        131009,
        "unique",
    ),
    RefusalCase(
        "interactive body over 1024",
        _with(_buttons("a"), "interactive.body.text", "x" * 1025),
        131009,
        "1024",
    ),
    RefusalCase("eleven list rows", _list(11), 131009, "10 rows"),
    RefusalCase("row title over 24", _list(2, title="x" * 25), 131009, "24"),
    RefusalCase("row description over 72", _list(2, description="x" * 73), 131009, "72"),
    RefusalCase("unsupported type", _text() | {"type": "sticker"}, 131051),
    RefusalCase("body is a list", [1, 2], 100),
]


class TestSendRefusals:
    @pytest.mark.parametrize("case", REFUSALS, ids=lambda c: c.label)
    async def test_invalid_send_gets_metas_error_code_and_names_the_limit(self, client, case):
        resp = await client.post(URL, json=case.body)

        assert resp.status_code == case.status
        error = resp.json()["error"]
        assert error["code"] == case.code
        assert case.detail in error["error_data"]["details"]

    async def test_error_envelope_has_exactly_metas_keys(self, client):
        resp = await client.post(URL, json=_with(_reminder(), "template.name", "nope"))

        error = resp.json()["error"]
        corpus = json.loads((CORPUS / "error_response_130429_full__metadocs.json").read_text())
        # error_subcode is not returned from v16.0 on (reference §2.1).
        assert set(error) == set(corpus["error"]) - {"error_subcode"}
        assert error["message"] == "(#132001) Template name does not exist in the translation"
        assert error["type"] == "OAuthException"
        assert error["error_data"]["messaging_product"] == "whatsapp"
        assert re.fullmatch(r"[A-Za-z0-9_-]{23}", error["fbtrace_id"])

    async def test_details_never_echo_a_parameter_value(self, client):
        body = _with(
            _reminder(),
            "template.components.0.parameters.0",
            {"type": "text", "text": "Ana María\tPérez"},
        )

        resp = await client.post(URL, json=body)

        assert resp.json()["error"]["code"] == 132018
        assert "Ana" not in resp.text

    async def test_refusals_are_counted_by_code(self, client):
        await client.post(URL, json=_text("x" * 5000))

        stats = (await client.get("/_sandbox/stats")).json()

        assert stats["errors"] == {"100": 1}
        assert stats["accepted"] == 0


class TestSendSuccess:
    async def test_template_send_answers_with_contacts_and_accepted_wamid(self, client):
        resp = await client.post(URL, json=_reminder())

        assert resp.status_code == 200
        data = resp.json()
        assert data["messaging_product"] == "whatsapp"
        assert data["contacts"] == [{"input": PATIENT, "wa_id": "573001230001"}]
        [message] = data["messages"]
        assert re.fullmatch(r"wamid\.[A-Za-z0-9+/=]+", message["id"])
        assert message["message_status"] == "accepted"

    async def test_quick_reply_without_payload_is_accepted(self, client):
        body = _with(_reminder(), "template.components", _reminder()["template"]["components"][:1])

        resp = await client.post(URL, json=body)

        assert resp.status_code == 200

    async def test_free_form_answer_has_no_message_status_like_the_corpus(self, client):
        corpus = json.loads((CORPUS / "send_response_interactive__metadocs.json").read_text())

        resp = await client.post(URL, json=_buttons("Sí", "No"))

        assert resp.status_code == 200
        data = resp.json()
        assert set(data) == set(corpus)
        assert set(data["messages"][0]) == set(corpus["messages"][0])

    @pytest.mark.parametrize(
        "body",
        [_text("x" * 4096), _buttons("x" * 20, "b", "c"), _list(10, description="d" * 72)],
        ids=["text at 4096", "three buttons at 20", "ten rows at the limits"],
    )
    async def test_values_exactly_at_the_limit_are_accepted(self, client, body):
        resp = await client.post(URL, json=body)

        assert resp.status_code == 200, resp.text

    async def test_results_ready_needs_its_url_suffix(self, client):
        base: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "to": PATIENT,
            "type": "template",
            "template": {
                "name": "results_ready",
                "language": {"code": "en_US"},
                "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}],
            },
        }
        url_button = {
            "type": "button",
            "sub_type": "url",
            "index": "0",
            "parameters": [{"type": "text", "text": "r-123"}],
        }
        with_suffix = copy.deepcopy(base)
        with_suffix["template"]["components"].append(url_button)

        missing = await client.post(URL, json=base)
        ok = await client.post(URL, json=with_suffix)

        assert missing.json()["error"]["code"] == 131008
        assert ok.status_code == 200

    async def test_each_send_gets_a_distinct_wamid(self, client):
        ids = {
            (await client.post(URL, json=_reminder(to=f"+5730012300{i:02d}"))).json()["messages"][
                0
            ]["id"]
            for i in range(20)
        }

        assert len(ids) == 20

    async def test_mark_as_read_answers_success(self, client):
        body = {"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.abc"}

        resp = await client.post(URL, json=body)

        assert resp.json() == {"success": True}
        assert (await client.get("/_sandbox/stats")).json()["read_receipts"] == 1

    async def test_message_log_keeps_template_and_button_payloads(self, client):
        resp = await client.post(URL, json=_reminder(biz_opaque_callback_data="row-9"))
        wamid = resp.json()["messages"][0]["id"]

        [record] = (await client.get("/_sandbox/messages", params={"to": PATIENT})).json()["data"]

        assert record["id"] == wamid
        assert record["template"] == {"name": "appointment_reminder", "language": "es"}
        assert record["biz_opaque_callback_data"] == "row-9"
        assert [(b["index"], b["payload"]) for b in record["buttons"]] == [
            (0, "tok-1"),
            (1, None),
            (2, None),
        ]
        assert record["text"].startswith("Hola Ana, le recordamos su cita el 12 de marzo")


@dataclass(frozen=True)
class AuthCase:
    label: str
    headers: dict[str, str] = field(default_factory=dict)


class TestAuthAndRouting:
    @pytest.mark.parametrize(
        "case",
        [
            AuthCase("no authorization header"),
            AuthCase("wrong token", {"Authorization": "Bearer wrong"}),
            AuthCase("not a bearer", {"Authorization": "Basic c2FuZGJveA=="}),
        ],
        ids=lambda c: c.label,
    )
    async def test_bad_token_gets_190_and_401(self, make_client, case):
        client = make_client()
        client.headers.pop("Authorization")

        resp = await client.post(URL, json=_reminder(), headers=case.headers)

        assert resp.status_code == 401
        error = resp.json()["error"]
        assert error["code"] == 190
        assert error["type"] == "OAuthException"
        assert client.sandbox.stats.accepted == 0

    async def test_configured_token_is_the_one_required(self, make_client):
        client = make_client(token="hospital-token")

        refused = await client.post(URL, json=_reminder())
        accepted = await client.post(
            URL, json=_reminder(), headers={"Authorization": "Bearer hospital-token"}
        )

        assert refused.status_code == 401
        assert accepted.status_code == 200

    async def test_other_phone_number_id_is_unsupported(self, client):
        resp = await client.post("/v21.0/999/messages", json=_reminder())

        assert resp.status_code == 400
        assert resp.json()["error"]["code"] == 100

    @pytest.mark.parametrize("version", ["v25.0", "v19.0", "v100.3"])
    async def test_any_dotted_version_is_served(self, client, version):
        resp = await client.post(f"/{version}/{PHONE_ID}/messages", json=_reminder())

        assert resp.status_code == 200

    async def test_malformed_version_is_refused(self, client):
        resp = await client.post(f"/latest/{PHONE_ID}/messages", json=_reminder())

        assert resp.json()["error"]["code"] == 100

    async def test_body_that_is_not_json_gets_code_100(self, client):
        resp = await client.post(URL, content=b"{not json")

        assert resp.json()["error"]["code"] == 100
