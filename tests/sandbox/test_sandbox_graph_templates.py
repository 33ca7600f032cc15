"""The template list endpoint and the shipped template file behave like the WABA's templates."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.sandbox import DEFAULT_TEMPLATES_PATH, SandboxConfig, TemplateFileError, create_app

WABA = SandboxConfig().waba_id
URL = f"/v21.0/{WABA}/message_templates"
NAMES = {
    "appointment_reminder",
    "results_ready",
    "appointment_confirmed",
    "appointment_cancelled",
    "appointment_rescheduled",
}


async def _follow(client: httpx.AsyncClient, params: dict[str, str]) -> list[dict[str, Any]]:
    """Walk ``paging.next`` (a full URL) like the bridge's sync does."""
    page = (await client.get(URL, params=params)).json()
    seen = list(page["data"])
    hops = 0
    while "next" in page.get("paging", {}):
        hops += 1
        assert hops < 50
        page = (await client.get(page["paging"]["next"])).json()
        seen.extend(page["data"])
    return seen


class TestTemplateList:
    async def test_paging_with_limit_walks_every_template_once(self, client):
        everything = await _follow(client, {"limit": "3", "fields": "name,language,status"})

        assert len(everything) == 10
        assert len({(t["name"], t["language"]) for t in everything}) == 10
        assert {t["name"] for t in everything} == NAMES

    async def test_page_has_metas_paging_shape(self, client):
        corpus = json.loads(
            Path(
                "/work/shared/corpus/whatsapp/template_list_response_paging__metadocs.json"
            ).read_text()
        )

        page = (await client.get(URL, params={"limit": "3", "fields": "name,status"})).json()

        assert set(page) == set(corpus)
        assert set(page["paging"]) == set(corpus["paging"])
        assert set(page["paging"]["cursors"]) == {"before", "after"}
        assert page["paging"]["next"].startswith("http://sandbox.test/v21.0/")
        assert [set(t) for t in page["data"]] == [{"name", "status", "id"}] * 3

    async def test_last_page_has_no_next(self, client):
        page = (await client.get(URL, params={"limit": "100"})).json()

        assert len(page["data"]) == 10
        assert "next" not in page["paging"]

    async def test_before_cursor_goes_back_one_page(self, client):
        first = (await client.get(URL, params={"limit": "4", "fields": "name,language"})).json()
        second = (await client.get(first["paging"]["next"])).json()

        back = (await client.get(second["paging"]["previous"])).json()

        assert back["data"] == first["data"]

    async def test_without_fields_the_full_template_object_is_returned(self, client):
        page = (await client.get(URL, params={"name": "appointment_reminder"})).json()

        assert {t["language"] for t in page["data"]} == {"es", "en_US"}
        tpl = page["data"][0]
        assert {"name", "language", "status", "category", "components", "id"} <= set(tpl)

    @pytest.mark.parametrize(
        ("params", "expected"),
        [
            ({"language": "en_US"}, 5),
            ({"status": "APPROVED"}, 10),
            ({"status": "PAUSED"}, 0),
            ({"category": "MARKETING"}, 0),
        ],
    )
    async def test_filters_narrow_the_list(self, client, params, expected):
        page = (await client.get(URL, params=params)).json()

        assert len(page["data"]) == expected

    async def test_bad_cursor_and_bad_limit_get_code_100(self, client):
        bad_cursor = await client.get(URL, params={"after": "!!!"})
        bad_limit = await client.get(URL, params={"limit": "0"})

        assert bad_cursor.json()["error"]["code"] == 100
        assert bad_limit.json()["error"]["code"] == 100

    async def test_template_list_requires_the_token(self, make_client):
        client = make_client()
        client.headers.pop("Authorization")

        resp = await client.get(URL)

        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == 190

    async def test_access_token_query_parameter_is_accepted_like_graph(self, make_client):
        client = make_client()
        client.headers.pop("Authorization")

        resp = await client.get(URL, params={"access_token": "sandbox-token", "limit": "2"})

        assert resp.status_code == 200
        assert "access_token=sandbox-token" in resp.json()["paging"]["next"]

    async def test_other_waba_is_unsupported(self, client):
        resp = await client.get("/v21.0/42/message_templates")

        assert resp.json()["error"]["code"] == 100


class TestShippedTemplates:
    def test_every_template_exists_in_es_and_en_us_approved_utility(self):
        doc = json.loads(DEFAULT_TEMPLATES_PATH.read_text(encoding="utf-8"))["data"]

        pairs = {(t["name"], t["language"]) for t in doc}

        assert pairs == {(n, lang) for n in NAMES for lang in ("es", "en_US")}
        assert {(t["status"], t["category"], t["parameter_format"]) for t in doc} == {
            ("APPROVED", "UTILITY", "POSITIONAL")
        }

    @pytest.mark.parametrize(
        ("name", "params"),
        [
            ("appointment_reminder", 4),
            ("results_ready", 1),
            ("appointment_confirmed", 2),
            ("appointment_cancelled", 2),
            ("appointment_rescheduled", 2),
        ],
    )
    def test_body_placeholders_match_the_agreed_parameters(self, name, params):
        doc = json.loads(DEFAULT_TEMPLATES_PATH.read_text(encoding="utf-8"))["data"]
        for tpl in (t for t in doc if t["name"] == name):
            [body] = [c for c in tpl["components"] if c["type"] == "BODY"]
            found = sorted(set(re.findall(r"\{\{(\d+)\}\}", body["text"])))
            assert found == [str(i) for i in range(1, params + 1)]
            assert len(body["text"]) <= 1024
            # Meta rejects templates whose variables lead or trail the text (2388299).
            assert not body["text"].startswith("{{")
            assert not body["text"].rstrip(".").endswith("}}")

    def test_reminder_buttons_are_confirm_reschedule_cancel_in_order(self):
        doc = json.loads(DEFAULT_TEMPLATES_PATH.read_text(encoding="utf-8"))["data"]
        labels = {
            t["language"]: [
                b["text"]
                for c in t["components"]
                if c["type"] == "BUTTONS"
                for b in c["buttons"]
                if b["type"] == "QUICK_REPLY"
            ]
            for t in doc
            if t["name"] == "appointment_reminder"
        }

        assert labels == {
            "es": ["Confirmar", "Reprogramar", "Cancelar"],
            "en_US": ["Confirm", "Reschedule", "Cancel"],
        }

    def test_results_ready_links_the_portal_with_a_suffix_and_no_result_content(self):
        doc = json.loads(DEFAULT_TEMPLATES_PATH.read_text(encoding="utf-8"))["data"]
        for tpl in (t for t in doc if t["name"] == "results_ready"):
            [buttons] = [c for c in tpl["components"] if c["type"] == "BUTTONS"]
            assert buttons["buttons"][0]["type"] == "URL"
            assert buttons["buttons"][0]["url"] == "https://portal.example.org/r/{{1}}"
            assert len(buttons["buttons"][0]["text"]) <= 25


class TestTemplateFile:
    async def test_a_custom_file_replaces_the_shipped_templates(self, tmp_path):
        path = tmp_path / "t.json"
        path.write_text(
            json.dumps(
                [
                    {
                        "name": "hello",
                        "language": "fr",
                        "status": "PAUSED",
                        "category": "UTILITY",
                        "components": [{"type": "BODY", "text": "Bonjour {{1}}."}],
                    }
                ]
            )
        )
        app = create_app(SandboxConfig(templates_path=path))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://sandbox.test",
            headers={"Authorization": "Bearer sandbox-token"},
        ) as client:
            listed = (await client.get(URL)).json()["data"]
            sent = await client.post(
                f"/v21.0/{SandboxConfig().phone_number_id}/messages",
                json={
                    "messaging_product": "whatsapp",
                    "to": "+447700900101",
                    "type": "template",
                    "template": {"name": "hello", "language": {"code": "fr"}},
                },
            )

        assert [t["name"] for t in listed] == ["hello"]
        assert sent.json()["error"]["code"] == 132015

    @pytest.mark.parametrize(
        "content",
        [
            "{not json",
            '{"data": 3}',
            '[{"name": "x"}]',
            (
                '[{"name": "x", "language": "es", '
                '"status": "APPROVED", "category": "UTILITY", "components": {}}]'
            ),
        ],
        ids=["not json", "data not a list", "missing fields", "components not a list"],
    )
    def test_an_unusable_file_is_refused_with_a_reason(self, tmp_path, content):
        path = tmp_path / "t.json"
        path.write_text(content)

        with pytest.raises(TemplateFileError):
            create_app(SandboxConfig(templates_path=path))
