"""The mappings agree with the templates the sandbox ships (bridge/sandbox/templates.json).

The sandbox's file stands for the WABA: every template a mapping sends must exist there with the
same name and language, body parameter count and button types, or Meta would answer 132000 /
132001 at send time.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bridge.engine.mappings import MappingSet
from bridge.whatsapp import ENGINE_TEMPLATES, TemplateSpec, check_templates
from tests.engine_mappings.support import SANDBOX_TEMPLATES

_PLACEHOLDER = re.compile(r"\{\{\s*(\d+)\s*\}\}")


def _sandbox() -> list[dict[str, Any]]:
    data = json.loads(SANDBOX_TEMPLATES.read_text(encoding="utf-8"))
    templates = data["data"] if isinstance(data, dict) else data
    assert isinstance(templates, list)
    return templates


def _component(template: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in template.get("components", []) if c.get("type") == kind), None)


def _spec_id(spec: TemplateSpec) -> str:
    return f"{spec.name}[{spec.language}]"


_SPECS = MappingSet.default().template_specs()


class TestSandboxTemplates:
    @pytest.mark.parametrize("spec", _SPECS, ids=_spec_id)
    def test_each_mapped_template_exists_in_the_sandbox_with_the_same_shape(
        self, spec: TemplateSpec
    ) -> None:
        matches = [
            t for t in _sandbox() if t["name"] == spec.name and t["language"] == spec.language
        ]
        assert len(matches) == 1, f"{_spec_id(spec)} missing from the sandbox"
        template = matches[0]

        body = _component(template, "BODY")
        assert body is not None
        assert len(set(_PLACEHOLDER.findall(body["text"]))) == spec.body
        header = _component(template, "HEADER")
        header_count = len(set(_PLACEHOLDER.findall(header.get("text", "")))) if header else 0
        assert header_count == spec.header
        buttons = _component(template, "BUTTONS")
        types = tuple(b["type"] for b in buttons["buttons"]) if buttons else ()
        assert types == spec.buttons
        assert template["status"] == "APPROVED"

    def test_the_channels_template_check_finds_no_mismatch(self) -> None:
        assert check_templates(_SPECS, _sandbox()) == []

    def test_the_mappings_cover_every_template_the_channel_expects(self) -> None:
        assert set(_SPECS) == set(ENGINE_TEMPLATES)

    def test_the_spanish_and_english_reminders_are_both_declared(self) -> None:
        languages = {spec.language for spec in _SPECS if spec.name == "appointment_reminder"}

        assert languages == {"es", "en_US"}
