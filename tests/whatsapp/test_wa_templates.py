"""Templates as code: specs checked against the WABA's template list."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.whatsapp import (
    ENGINE_TEMPLATES,
    GraphClient,
    TemplateSpec,
    check_templates,
    sync_templates,
)

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "whatsapp"


def graph_template(
    name: str,
    language: str,
    body: str,
    *,
    status: str = "APPROVED",
    buttons: list[dict[str, Any]] | None = None,
    header: dict[str, Any] | None = None,
    named: bool = False,
) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    if header:
        components.append({"type": "HEADER", **header})
    components.append({"type": "BODY", "text": body})
    if buttons:
        components.append({"type": "BUTTONS", "buttons": buttons})
    return {
        "name": name,
        "language": language,
        "status": status,
        "category": "UTILITY",
        "parameter_format": "NAMED" if named else "POSITIONAL",
        "components": components,
        "id": "1",
    }


QR = [{"type": "QUICK_REPLY", "text": t} for t in ("Confirmar", "Reprogramar", "Cancelar")]
REMINDER_ES = graph_template(
    "appointment_reminder", "es", "Hola {{1}}, su cita el {{2}} a las {{3}} en {{4}}.", buttons=QR
)
REMINDER_SPEC = TemplateSpec(
    name="appointment_reminder",
    language="es",
    body=4,
    buttons=("QUICK_REPLY", "QUICK_REPLY", "QUICK_REPLY"),
)


def full_waba() -> list[dict[str, Any]]:
    out = []
    for lang in ("es", "en_US"):
        out.append(
            graph_template(
                "appointment_reminder", lang, "{{1}} x {{2}} y {{3}} z {{4}}.", buttons=QR
            )
        )
        out.append(
            graph_template(
                "results_ready",
                lang,
                "Hola {{1}}, resultados listos.",
                buttons=[{"type": "URL", "text": "Ver", "url": "https://portal.example/r/{{1}}"}],
            )
        )
        for name in ("appointment_confirmed", "appointment_cancelled", "appointment_rescheduled"):
            out.append(graph_template(name, lang, "Cita el {{1}} a las {{2}}."))
    return out


class TestCheck:
    def test_matching_waba_has_no_mismatch(self):
        assert check_templates(ENGINE_TEMPLATES, full_waba()) == []

    @pytest.mark.parametrize(
        ("remote", "kind", "found"),
        [
            ([], "missing", "none"),
            ([{**REMINDER_ES, "language": "en_US"}], "language_missing", "en_US"),
            ([{**REMINDER_ES, "status": "PAUSED"}], "not_approved", "PAUSED"),
            (
                [graph_template("appointment_reminder", "es", "Hola {{1}} {{2}}.", buttons=QR)],
                "body_params",
                "2",
            ),
            (
                [
                    graph_template(
                        "appointment_reminder",
                        "es",
                        "{{1}} a {{2}} b {{3}} c {{4}}",
                        buttons=QR[:2],
                    )
                ],
                "buttons",
                "QUICK_REPLY,QUICK_REPLY",
            ),
            (
                [
                    graph_template(
                        "appointment_reminder",
                        "es",
                        "{{a}} {{b}} {{c}} {{d}}",
                        buttons=QR,
                        named=True,
                    )
                ],
                "parameter_format",
                "NAMED",
            ),
            (
                [{"name": "appointment_reminder", "language": "es", "status": "APPROVED"}],
                "incomplete",
                "none (fetch with fields=)",
            ),
            (
                [
                    graph_template(
                        "appointment_reminder",
                        "es",
                        "{{1}} a {{2}} b {{3}} c {{4}}",
                        buttons=QR,
                        header={"format": "TEXT", "text": "Hi {{1}}"},
                    )
                ],
                "header_params",
                "1",
            ),
        ],
        ids=[
            "missing",
            "other language",
            "paused",
            "param count",
            "buttons",
            "named",
            "no components",
            "unexpected header param",
        ],
    )
    def test_each_mismatch_is_named(self, remote, kind, found):
        (mismatch,) = check_templates([REMINDER_SPEC], remote)
        assert (mismatch.kind, mismatch.found) == (kind, found)
        assert "appointment_reminder [es]" in str(mismatch)

    def test_named_spec_matches_named_template(self):
        spec = TemplateSpec(name="n", language="es", body=("first_name", "date"))
        remote = [graph_template("n", "es", "Hola {{first_name}}, el {{date}}.", named=True)]
        assert check_templates([spec], remote) == []

    def test_static_url_button_cannot_take_our_suffix(self):
        spec = TemplateSpec(name="results_ready", language="es", body=1, buttons=("URL",))
        remote = [
            graph_template(
                "results_ready",
                "es",
                "Hola {{1}}.",
                buttons=[{"type": "URL", "text": "Ver", "url": "https://portal.example/"}],
            )
        ]
        (mismatch,) = check_templates([spec], remote)
        assert mismatch.kind == "buttons"

    def test_corpus_listing_without_languages_reports_language_missing(self):
        listing = json.loads((CORPUS / "template_list_response_paging__metadocs.json").read_text())
        specs = [
            TemplateSpec(name="seasonal_promotion_text_only", language="en_US"),
            TemplateSpec(name="appointment_reminder", language="es", body=4),
        ]
        kinds = [m.kind for m in check_templates(specs, listing["data"])]
        assert kinds == ["language_missing", "missing"]


class TestSync:
    async def test_sync_fetches_every_page_and_checks(self, fake_graph):
        waba = full_waba()
        fake_graph.respond(
            200,
            {
                "data": waba[:5],
                "paging": {
                    "cursors": {"after": "P2"},
                    "next": "https://graph.facebook.com/v25.0/1/x?after=P2",
                },
            },
        )
        fake_graph.respond(200, {"data": waba[5:], "paging": {"cursors": {"after": "P3"}}})
        client = GraphClient(
            "http://graph.test",
            "v25.0",
            "1",
            "2",
            "test-token",
            transport=httpx.ASGITransport(app=fake_graph),
        )
        async with client:
            templates, mismatches = await sync_templates(client, ENGINE_TEMPLATES)
        assert len(templates) == 10
        assert mismatches == []
        assert fake_graph.requests[1].query["after"] == ["P2"]
        assert fake_graph.unused() == []
