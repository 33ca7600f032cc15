"""Request bodies and Meta's limits, checked before anything is sent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from bridge.errors import MessageRejected
from bridge.ports import Notification
from bridge.whatsapp._payloads import build_message, build_read_receipt

TO = "+573001230001"


def note(kind: str, content: dict[str, Any], *, to: str = TO, outbox_id: int = 42) -> Notification:
    return Notification(outbox_id=outbox_id, to=to, kind=kind, content=content)


REMINDER = {
    "name": "appointment_reminder",
    "language": "es",
    "body": ["Ana", "12 de marzo", "10:30", "Sede Norte"],
    "buttons": [
        {"index": 0, "sub_type": "quick_reply", "payload": "confirm.tok0"},
        {"index": 1, "sub_type": "quick_reply", "payload": "reschedule.tok1"},
        {"index": 2, "sub_type": "quick_reply", "payload": "cancel.tok2"},
    ],
}


class TestBodies:
    def test_template_with_positional_body_and_quick_replies(self):
        assert build_message(note("template", REMINDER)) == {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": TO,
            "type": "template",
            "template": {
                "name": "appointment_reminder",
                "language": {"code": "es"},
                "components": [
                    {
                        "type": "body",
                        "parameters": [
                            {"type": "text", "text": "Ana"},
                            {"type": "text", "text": "12 de marzo"},
                            {"type": "text", "text": "10:30"},
                            {"type": "text", "text": "Sede Norte"},
                        ],
                    },
                    {
                        "type": "button",
                        "sub_type": "quick_reply",
                        "index": "0",
                        "parameters": [{"type": "payload", "payload": "confirm.tok0"}],
                    },
                    {
                        "type": "button",
                        "sub_type": "quick_reply",
                        "index": "1",
                        "parameters": [{"type": "payload", "payload": "reschedule.tok1"}],
                    },
                    {
                        "type": "button",
                        "sub_type": "quick_reply",
                        "index": "2",
                        "parameters": [{"type": "payload", "payload": "cancel.tok2"}],
                    },
                ],
            },
            "biz_opaque_callback_data": "42",
        }

    def test_template_with_header_named_body_url_button_and_reply_to(self):
        content = {
            "name": "results_ready",
            "language": "en_US",
            "header": ["Clinic"],
            "body": {"first_name": "Ana"},
            "buttons": [{"index": 0, "sub_type": "url", "text": "r/abc123"}],
            "reply_to": "wamid.in1",
        }
        body = build_message(note("template", content))
        assert body["template"]["components"] == [
            {"type": "header", "parameters": [{"type": "text", "text": "Clinic"}]},
            {
                "type": "body",
                "parameters": [{"type": "text", "parameter_name": "first_name", "text": "Ana"}],
            },
            {
                "type": "button",
                "sub_type": "url",
                "index": "0",
                "parameters": [{"type": "text", "text": "r/abc123"}],
            },
        ]
        assert body["context"] == {"message_id": "wamid.in1"}

    def test_template_without_parameters_has_no_components(self):
        body = build_message(note("template", {"name": "hello_world", "language": "en_US"}))
        assert body["template"] == {"name": "hello_world", "language": {"code": "en_US"}}

    def test_text(self):
        body = build_message(note("text", {"body": "Hola", "preview_url": False}))
        assert body["type"] == "text"
        assert body["text"] == {"body": "Hola", "preview_url": False}
        assert body["biz_opaque_callback_data"] == "42"

    def test_reply_buttons(self):
        content = {
            "body": "¿Confirma?",
            "header": "Cita",
            "footer": "Clínica",
            "buttons": [{"id": "confirm.t", "title": "Sí"}, {"id": "cancel.t", "title": "No"}],
        }
        assert build_message(note("buttons", content))["interactive"] == {
            "type": "button",
            "header": {"type": "text", "text": "Cita"},
            "body": {"text": "¿Confirma?"},
            "footer": {"text": "Clínica"},
            "action": {
                "buttons": [
                    {"type": "reply", "reply": {"id": "confirm.t", "title": "Sí"}},
                    {"type": "reply", "reply": {"id": "cancel.t", "title": "No"}},
                ]
            },
        }

    def test_list(self):
        content = {
            "body": "Elija",
            "button": "Horarios",
            "sections": [
                {
                    "title": "Lunes",
                    "rows": [
                        {"id": "slot.a", "title": "10:00", "description": "Sede Norte"},
                        {"id": "slot.b", "title": "11:00"},
                    ],
                }
            ],
        }
        assert build_message(note("list", content))["interactive"] == {
            "type": "list",
            "body": {"text": "Elija"},
            "action": {
                "button": "Horarios",
                "sections": [
                    {
                        "title": "Lunes",
                        "rows": [
                            {"id": "slot.a", "title": "10:00", "description": "Sede Norte"},
                            {"id": "slot.b", "title": "11:00"},
                        ],
                    }
                ],
            },
        }

    def test_read_receipt(self):
        assert build_read_receipt("wamid.x") == {
            "messaging_product": "whatsapp",
            "status": "read",
            "message_id": "wamid.x",
        }


def rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"slot.{i}", "title": f"{i}:00"} for i in range(n)]


@dataclass(frozen=True)
class LimitCase:
    label: str
    kind: str
    content: dict[str, Any]
    names: str  # text the error must contain
    to: str = TO


LIMIT_CASES = [
    LimitCase("text body over 4096", "text", {"body": "x" * 4097}, "text.body ≤ 4096"),
    LimitCase("empty text body", "text", {"body": " "}, "text.body"),
    LimitCase(
        "body param over 1024",
        "template",
        {"name": "t", "language": "es", "body": ["x" * 1025]},
        "template.body_param ≤ 1024",
    ),
    LimitCase(
        "empty body param",
        "template",
        {"name": "t", "language": "es", "body": ["", "a"]},
        "template.body[0]",
    ),
    LimitCase(
        "header param over 60",
        "template",
        {"name": "t", "language": "es", "header": ["x" * 61]},
        "template.header_param ≤ 60",
    ),
    LimitCase(
        "payload over 256",
        "template",
        {
            "name": "t",
            "language": "es",
            "buttons": [{"index": 0, "sub_type": "quick_reply", "payload": "p" * 257}],
        },
        "template.payload ≤ 256",
    ),
    LimitCase(
        "bad template name", "template", {"name": "Bad-Name", "language": "es"}, "template.name"
    ),
    LimitCase(
        "bad language", "template", {"name": "t", "language": "spanish!"}, "template.language"
    ),
    LimitCase(
        "unknown button sub type",
        "template",
        {"name": "t", "language": "es", "buttons": [{"index": 0, "sub_type": "call"}]},
        "sub_type",
    ),
    LimitCase(
        "duplicate button index",
        "template",
        {
            "name": "t",
            "language": "es",
            "buttons": [
                {"index": 0, "sub_type": "url", "text": "a"},
                {"index": 0, "sub_type": "url", "text": "b"},
            ],
        },
        "duplicate button index",
    ),
    LimitCase(
        "four reply buttons",
        "buttons",
        {"body": "b", "buttons": [{"id": f"i{i}", "title": f"t{i}"} for i in range(4)]},
        "buttons.count ≤ 3",
    ),
    LimitCase("no reply buttons", "buttons", {"body": "b", "buttons": []}, "at least 1"),
    LimitCase(
        "button title over 20",
        "buttons",
        {"body": "b", "buttons": [{"id": "a", "title": "x" * 21}]},
        "buttons.title ≤ 20",
    ),
    LimitCase(
        "button id over 256",
        "buttons",
        {"body": "b", "buttons": [{"id": "x" * 257, "title": "a"}]},
        "buttons.id ≤ 256",
    ),
    LimitCase(
        "interactive body over 1024",
        "buttons",
        {"body": "x" * 1025, "buttons": [{"id": "a", "title": "a"}]},
        "buttons.body ≤ 1024",
    ),
    LimitCase(
        "footer over 60",
        "buttons",
        {"body": "b", "footer": "x" * 61, "buttons": [{"id": "a", "title": "a"}]},
        "buttons.footer ≤ 60",
    ),
    LimitCase(
        "ids differing by trailing space",
        "buttons",
        {"body": "b", "buttons": [{"id": "1:", "title": "a"}, {"id": "1: ", "title": "b"}]},
        "duplicate button id",
    ),
    LimitCase(
        "duplicate titles",
        "buttons",
        {"body": "b", "buttons": [{"id": "1", "title": "a"}, {"id": "2", "title": "a"}]},
        "unique",
    ),
    LimitCase(
        "eleven rows in one section",
        "list",
        {"body": "b", "button": "x", "sections": [{"title": "s", "rows": rows(11)}]},
        "list.rows ≤ 10",
    ),
    LimitCase(
        "eleven rows across sections",
        "list",
        {
            "body": "b",
            "button": "x",
            "sections": [{"title": "s", "rows": rows(6)}, {"title": "t", "rows": rows(5)}],
        },
        "in total",
    ),
    LimitCase(
        "row title over 24",
        "list",
        {"body": "b", "button": "x", "sections": [{"rows": [{"id": "a", "title": "x" * 25}]}]},
        "list.row_title ≤ 24",
    ),
    LimitCase(
        "row description over 72",
        "list",
        {
            "body": "b",
            "button": "x",
            "sections": [{"rows": [{"id": "a", "title": "a", "description": "x" * 73}]}],
        },
        "list.row_description ≤ 72",
    ),
    LimitCase(
        "row id over 200",
        "list",
        {"body": "b", "button": "x", "sections": [{"rows": [{"id": "x" * 201, "title": "a"}]}]},
        "list.row_id ≤ 200",
    ),
    LimitCase(
        "list button over 20",
        "list",
        {"body": "b", "button": "x" * 21, "sections": [{"rows": rows(1)}]},
        "list.button ≤ 20",
    ),
    LimitCase(
        "section title over 24",
        "list",
        {"body": "b", "button": "x", "sections": [{"title": "x" * 25, "rows": rows(1)}]},
        "list.section_title ≤ 24",
    ),
    LimitCase(
        "untitled sections when several",
        "list",
        {"body": "b", "button": "x", "sections": [{"rows": rows(1)}, {"rows": rows(1)}]},
        "title",
    ),
    LimitCase("to without plus", "text", {"body": "hi"}, "E.164", to="573001230001"),
    LimitCase("unknown kind", "carousel", {}, "unknown kind"),
    LimitCase("buttons not a list", "buttons", {"body": "b", "buttons": "x"}, "must be a list"),
]


class TestLimits:
    @pytest.mark.parametrize("case", LIMIT_CASES, ids=lambda c: c.label)
    def test_breach_is_refused_before_sending_with_the_limit_named(self, case: LimitCase) -> None:
        with pytest.raises(MessageRejected) as info:
            build_message(note(case.kind, case.content, to=case.to))
        assert case.names in str(info.value)
        assert not info.value.retryable
        assert "outbox 42" in str(info.value)

    def test_error_never_contains_the_content_or_phone(self):
        with pytest.raises(MessageRejected) as info:
            build_message(note("text", {"body": "Ana Pérez " * 500}))
        assert "Ana" not in str(info.value)
        assert TO not in str(info.value)

    def test_limits_at_the_edge_pass(self):
        build_message(note("text", {"body": "x" * 4096}))
        build_message(
            note(
                "buttons",
                {
                    "body": "x" * 1024,
                    "buttons": [
                        {"id": "x" * 256, "title": "y" * 20},
                        {"id": "b", "title": "b"},
                        {"id": "c", "title": "c"},
                    ],
                },
            )
        )
        build_message(
            note(
                "list",
                {
                    "body": "b",
                    "button": "x" * 20,
                    "sections": [
                        {"title": "x" * 24, "rows": rows(5)},
                        {
                            "title": "y",
                            "rows": [
                                {"id": f"slot.z{i}", "title": "t" * 24, "description": "d" * 72}
                                for i in range(5)
                            ],
                        },
                    ],
                },
            )
        )
