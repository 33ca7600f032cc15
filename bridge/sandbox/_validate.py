"""Validation of ``POST /{version}/{phone_number_id}/messages`` bodies, the way Meta refuses them.

Implements the limits of reference whatsapp.md §1.1 to §1.5 and the template checks of §2.3
(132000 parameter count, 132001 name/language, 132005 rendered length, 132012 button type,
132015/132016 paused/disabled, 132018 parameter format). ``error_data.details`` always names the
field and the limit, never the value the bridge sent (values may be patient data).

A template send that passes, trimmed from the corpus request::

    {"messaging_product": "whatsapp", "to": "+573001230001", "type": "template",
     "template": {"name": "appointment_reminder", "language": {"code": "es"},
                  "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ana"}, ...]},
                                 {"type": "button", "sub_type": "quick_reply", "index": "0",
                                  "parameters": [{"type": "payload", "payload": "tok-1"}]}]}}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bridge.sandbox._errors import GraphError
from bridge.sandbox._templates import Template, TemplateRegistry

__all__ = ["ReadReceipt", "ValidatedSend", "validate_request"]

#: Characters Meta accepts in ``to`` besides digits (reference §1.1).
_PHONE_OK = re.compile(r"^[+\d\s().-]+$")
#: Template parameters may not hold new lines, tabs or more than 4 consecutive spaces.
_BAD_PARAM = re.compile(r"[\n\t]| {5,}")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")

TEXT_BODY_MAX = 4096
INTERACTIVE_BODY_MAX = 1024
LIST_BODY_MAX = 4096
HEADER_TEXT_MAX = 60
FOOTER_MAX = 60
REPLY_BUTTONS_MAX = 3
BUTTON_ID_MAX = 256
BUTTON_TITLE_MAX = 20
LIST_BUTTON_MAX = 20
LIST_SECTIONS_MAX = 10
LIST_ROWS_MAX = 10
SECTION_TITLE_MAX = 24
ROW_ID_MAX = 200
ROW_TITLE_MAX = 24
ROW_DESCRIPTION_MAX = 72
CTA_TEXT_MAX = 20
CALLBACK_DATA_MAX = 512
TEMPLATE_BODY_MAX = 1024


@dataclass(frozen=True, slots=True)
class ReadReceipt:
    """The mark-as-read form ``{"status": "read", "message_id": ...}``."""

    message_id: str


@dataclass(slots=True)
class ValidatedSend:
    """A send request that Meta would accept.

    Args:
        to: ``to`` exactly as sent (echoed as ``contacts[].input``).
        wa_id: Digits of ``to`` (``contacts[].wa_id``).
        type: ``template``, ``text`` or ``interactive``.
        template: The template translation used, for template sends.
        interactive_type: ``button``, ``list`` or ``cta_url`` for interactive sends.
        buttons: What the patient can tap. Template: ``{index, sub_type, label, payload}``
            (payload ``None`` when the bridge set none); interactive: ``{id, title}``.
        rows: Rows of an interactive list: ``{id, title, description}``.
        text: The text the patient would see (rendered body).
        callback_data: ``biz_opaque_callback_data``, echoed in statuses.
        context_id: ``context.message_id`` when the message quotes one.
        body: The request body as received.
    """

    to: str
    wa_id: str
    type: str
    body: dict[str, Any]
    template: Template | None = None
    interactive_type: str | None = None
    buttons: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""
    callback_data: str | None = None
    context_id: str | None = None


def _require_dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise GraphError(100, f"{where} must be an object")
    return value


def _require_str(value: Any, where: str, *, code: int = 100) -> str:
    if not isinstance(value, str) or not value:
        raise GraphError(code, f"{where} is required and must be a non-empty string")
    return value


def _max_len(value: str, limit: int, where: str, *, code: int = 131009) -> None:
    if len(value) > limit:
        raise GraphError(code, f"{where} must be at most {limit} characters long")


def validate_request(body: Any, templates: TemplateRegistry) -> ValidatedSend | ReadReceipt:
    """Check one send body as Meta would.

    Args:
        body: The decoded JSON body.
        templates: The WABA's templates.

    Returns:
        A :class:`ValidatedSend`, or a :class:`ReadReceipt` for the mark-as-read form.

    Raises:
        GraphError: With the code Meta would answer (100, 131008, 131009, 131051, 132xxx).
    """
    body = _require_dict(body, "request body")
    if body.get("messaging_product") != "whatsapp":
        raise GraphError(100, "messaging_product is required and must be 'whatsapp'")
    if body.get("status") == "read":
        return ReadReceipt(_require_str(body.get("message_id"), "message_id"))
    recipient_type = body.get("recipient_type", "individual")
    if recipient_type != "individual":
        raise GraphError(100, "recipient_type: the sandbox supports 'individual' only")
    to = _require_str(body.get("to"), "to")
    digits = re.sub(r"\D", "", to)
    if not digits or not _PHONE_OK.match(to):
        raise GraphError(131009, "to must be a phone number: digits with an optional +")
    send = ValidatedSend(to=to, wa_id=digits, type=str(body.get("type", "text")), body=body)
    callback = body.get("biz_opaque_callback_data")
    if callback is not None:
        if not isinstance(callback, str):
            raise GraphError(100, "biz_opaque_callback_data must be a string")
        _max_len(callback, CALLBACK_DATA_MAX, "biz_opaque_callback_data")
        send.callback_data = callback
    context = body.get("context")
    if context is not None:
        send.context_id = _require_str(
            _require_dict(context, "context").get("message_id"), "context.message_id"
        )
    if send.type == "text":
        _validate_text(body, send)
    elif send.type == "interactive":
        _validate_interactive(_require_dict(body.get("interactive"), "interactive"), send)
    elif send.type == "template":
        _validate_template(_require_dict(body.get("template"), "template"), send, templates)
    else:
        raise GraphError(131051, "type: the sandbox supports template, text and interactive")
    return send


def _validate_text(body: dict[str, Any], send: ValidatedSend) -> None:
    text = _require_dict(body.get("text"), "text")
    value = _require_str(text.get("body"), "text.body")
    _max_len(value, TEXT_BODY_MAX, "text.body", code=100)
    send.text = value


def _optional_text(obj: dict[str, Any], key: str, limit: int, where: str) -> None:
    part = obj.get(key)
    if part is None:
        return
    part = _require_dict(part, where)
    if part.get("type", "text") == "text" and "text" in part:
        _max_len(_require_str(part.get("text"), f"{where}.text"), limit, f"{where}.text")


def _validate_interactive(inter: dict[str, Any], send: ValidatedSend) -> None:
    kind = inter.get("type")
    body = _require_dict(inter.get("body"), "interactive.body")
    text = _require_str(body.get("text"), "interactive.body.text", code=131008)
    limit = LIST_BODY_MAX if kind == "list" else INTERACTIVE_BODY_MAX
    _max_len(text, limit, "interactive.body.text")
    _optional_text(inter, "header", HEADER_TEXT_MAX, "interactive.header")
    _optional_text(inter, "footer", FOOTER_MAX, "interactive.footer")
    action = _require_dict(inter.get("action"), "interactive.action")
    send.text = text
    if kind == "button":
        send.interactive_type = "button"
        send.buttons = _reply_buttons(action)
    elif kind == "list":
        send.interactive_type = "list"
        send.rows = _list_rows(action)
    elif kind == "cta_url":
        send.interactive_type = "cta_url"
        params = _require_dict(action.get("parameters"), "interactive.action.parameters")
        label = _require_str(params.get("display_text"), "action.parameters.display_text")
        _max_len(label, CTA_TEXT_MAX, "action.parameters.display_text")
        _require_str(params.get("url"), "action.parameters.url")
    else:
        raise GraphError(131009, "interactive.type must be one of button, list, cta_url")


def _reply_buttons(action: dict[str, Any]) -> list[dict[str, Any]]:
    buttons = action.get("buttons")
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= REPLY_BUTTONS_MAX:
        raise GraphError(
            131009, f"interactive.action.buttons must hold 1 to {REPLY_BUTTONS_MAX} buttons"
        )
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(buttons):
        where = f"interactive.action.buttons[{i}]"
        button = _require_dict(raw, where)
        if button.get("type") != "reply":
            raise GraphError(131009, f"{where}.type must be 'reply'")
        reply = _require_dict(button.get("reply"), f"{where}.reply")
        bid = _require_str(reply.get("id"), f"{where}.reply.id", code=131008)
        title = _require_str(reply.get("title"), f"{where}.reply.title", code=131008)
        _max_len(bid, BUTTON_ID_MAX, f"{where}.reply.id")
        _max_len(title, BUTTON_TITLE_MAX, f"{where}.reply.title (button title)")
        out.append({"id": bid, "title": title})
    # pywa found ids differing only by trailing whitespace count as duplicates (reference §1.3).
    if len({b["id"].strip() for b in out}) != len(out):
        raise GraphError(131009, "interactive.action.buttons: button ids must be unique")
    if len({b["title"] for b in out}) != len(out):
        raise GraphError(131009, "interactive.action.buttons: button titles must be unique")
    return out


def _list_rows(action: dict[str, Any]) -> list[dict[str, Any]]:
    label = _require_str(action.get("button"), "interactive.action.button", code=131008)
    _max_len(label, LIST_BUTTON_MAX, "interactive.action.button")
    sections = action.get("sections")
    if not isinstance(sections, list) or not 1 <= len(sections) <= LIST_SECTIONS_MAX:
        raise GraphError(
            131009, f"interactive.action.sections must hold 1 to {LIST_SECTIONS_MAX} sections"
        )
    rows: list[dict[str, Any]] = []
    for s, raw_section in enumerate(sections):
        section = _require_dict(raw_section, f"sections[{s}]")
        title = section.get("title")
        if title is None and len(sections) > 1:
            raise GraphError(131008, f"sections[{s}].title is required with several sections")
        if title is not None:
            _max_len(
                _require_str(title, f"sections[{s}].title"),
                SECTION_TITLE_MAX,
                f"sections[{s}].title",
            )
        section_rows = section.get("rows")
        if not isinstance(section_rows, list) or not section_rows:
            raise GraphError(131009, f"sections[{s}].rows must hold at least 1 row")
        for r, raw_row in enumerate(section_rows):
            where = f"sections[{s}].rows[{r}]"
            row = _require_dict(raw_row, where)
            rid = _require_str(row.get("id"), f"{where}.id", code=131008)
            rtitle = _require_str(row.get("title"), f"{where}.title", code=131008)
            _max_len(rid, ROW_ID_MAX, f"{where}.id")
            _max_len(rtitle, ROW_TITLE_MAX, f"{where}.title (row title)")
            desc = row.get("description")
            if desc is not None:
                _max_len(
                    _require_str(desc, f"{where}.description"),
                    ROW_DESCRIPTION_MAX,
                    f"{where}.description (row description)",
                )
            rows.append({"id": rid, "title": rtitle, "description": desc})
    if len(rows) > LIST_ROWS_MAX:
        raise GraphError(
            131009, f"interactive.action.sections: at most {LIST_ROWS_MAX} rows in total"
        )
    if len({r["id"] for r in rows}) != len(rows):
        raise GraphError(131009, "interactive.action.sections: row ids must be unique")
    return rows


def _param_text(param: Any, where: str) -> tuple[str | None, str]:
    """Return (parameter_name, rendered text) of one header/body parameter."""
    param = _require_dict(param, where)
    kind = param.get("type")
    if kind == "text":
        value = param.get("text")
        if not isinstance(value, str) or not value.strip():
            raise GraphError(131008, f"{where}.text is required")
    elif kind in ("currency", "date_time"):
        inner = _require_dict(param.get(kind), f"{where}.{kind}")
        value = _require_str(
            inner.get("fallback_value"), f"{where}.{kind}.fallback_value", code=131008
        )
    elif kind in ("image", "video", "document", "location"):
        return param.get("parameter_name"), ""
    else:
        raise GraphError(131009, f"{where}.type must be text, currency, date_time or media")
    if _BAD_PARAM.search(value):
        raise GraphError(
            132018,
            f"{where}: param text cannot have new-line/tab characters or more than 4 "
            "consecutive spaces",
        )
    name = param.get("parameter_name")
    return (name if isinstance(name, str) else None), value


def _check_params(
    section: str, given: list[Any], expected: tuple[str, ...], named: bool
) -> dict[str, str]:
    if len(given) != len(expected):
        raise GraphError(
            132000,
            f"{section}: number of localizable_params ({len(given)}) does not match the "
            f"expected number of params ({len(expected)})",
        )
    values: dict[str, str] = {}
    for i, raw in enumerate(given):
        name, text = _param_text(raw, f"{section}.parameters[{i}]")
        if named:
            if name is None or name not in expected or name in values:
                raise GraphError(
                    132000, f"{section}.parameters[{i}]: parameter_name missing or unknown"
                )
            values[name] = text
        else:
            values[expected[i]] = text
    return values


def _render(text: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _validate_template(
    tpl: dict[str, Any], send: ValidatedSend, templates: TemplateRegistry
) -> None:
    name = _require_str(tpl.get("name"), "template.name")
    language = _require_dict(tpl.get("language"), "template.language")
    code = _require_str(language.get("code"), "template.language.code")
    policy = language.get("policy", "deterministic")
    if policy != "deterministic":
        raise GraphError(100, "template.language.policy must be 'deterministic'")
    template = templates.get(name, code)
    # Names and language codes are ours, not patient data, so they may appear in details.
    if template is None:
        raise GraphError(132001, f"template name ({name}) does not exist in {code}")
    if template.status == "PAUSED":
        raise GraphError(132015, f"template ({name}) in {code} is paused")
    if template.status == "DISABLED":
        raise GraphError(132016, f"template ({name}) in {code} is disabled")
    if template.status != "APPROVED":
        raise GraphError(132001, f"template name ({name}) is not approved in {code}")
    components = tpl.get("components", [])
    if not isinstance(components, list):
        raise GraphError(100, "template.components must be a list")
    header: list[Any] = []
    body: list[Any] = []
    button_params: dict[int, dict[str, Any]] = {}
    for c, raw in enumerate(components):
        comp = _require_dict(raw, f"template.components[{c}]")
        kind = str(comp.get("type", "")).lower()
        params = comp.get("parameters", [])
        if not isinstance(params, list):
            raise GraphError(100, f"template.components[{c}].parameters must be a list")
        if kind == "header":
            header = params
        elif kind == "body":
            body = params
        elif kind == "button":
            index = _button_index(comp, c, template)
            if index in button_params:
                raise GraphError(131009, f"button index {index} appears twice")
            button_params[index] = comp
        else:
            raise GraphError(100, f"template.components[{c}].type must be header, body or button")
    if template.header_format not in (None, "TEXT"):
        if len(header) != 1:
            raise GraphError(131008, "header: the template's media header needs 1 parameter")
    else:
        _check_params("header", header, template.header_params, template.named)
    values = _check_params("body", body, template.body_params, template.named)
    rendered = _render(template.body_text, values)
    if len(rendered) > TEMPLATE_BODY_MAX:
        raise GraphError(132005, f"body: rendered text is over {TEMPLATE_BODY_MAX} characters")
    send.template = template
    send.text = rendered
    send.buttons = _template_buttons(template, button_params)


def _button_index(comp: dict[str, Any], c: int, template: Template) -> int:
    raw = comp.get("index")
    try:
        index = int(str(raw))  # Meta's examples send the index as a string
    except ValueError:
        raise GraphError(131009, f"template.components[{c}].index must be a number") from None
    if not 0 <= index < len(template.buttons):
        raise GraphError(131009, f"button index {index}: the template has no such button")
    sub_type = str(comp.get("sub_type", "")).lower()
    expected = template.buttons[index].type.lower()
    if sub_type != expected:
        raise GraphError(
            132012, f"button index {index}: sub_type {sub_type!r} does not match {expected!r}"
        )
    return index


def _template_buttons(
    template: Template, params: dict[int, dict[str, Any]]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for button in template.buttons:
        comp = params.get(button.index)
        given = comp.get("parameters", []) if comp else []
        if button.type == "QUICK_REPLY":
            payload: str | None = None
            if given:
                param = _require_dict(given[0], f"button {button.index}.parameters[0]")
                if param.get("type") != "payload":
                    raise GraphError(132012, f"button index {button.index}: needs a payload")
                payload = _require_str(
                    param.get("payload"), f"button {button.index} payload", code=131008
                )
            out.append(
                {
                    "index": button.index,
                    "sub_type": "quick_reply",
                    "label": button.text,
                    "payload": payload,
                }
            )
        elif button.type == "URL":
            suffix: str | None = None
            if button.dynamic:
                if not given:
                    raise GraphError(
                        131008, f"button index {button.index} (url): a text parameter is required"
                    )
                param = _require_dict(given[0], f"button {button.index}.parameters[0]")
                suffix = _require_str(
                    param.get("text"), f"button {button.index} url suffix", code=131008
                )
            out.append(
                {
                    "index": button.index,
                    "sub_type": "url",
                    "label": button.text,
                    "url_suffix": suffix,
                }
            )
    return out
