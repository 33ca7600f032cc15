"""Request bodies for ``POST /{version}/{phone-number-id}/messages``, checked against Meta's limits.

Implements reference whatsapp.md §1.1-§1.4: the common envelope (``to`` in E.164 with ``+``,
``biz_opaque_callback_data`` ≤ 512), template messages (§1.2), interactive reply buttons (§1.3)
and lists (§1.4), and text (4096). Every limit is checked *before* sending, and a breach raises
:class:`~bridge.errors.MessageRejected` naming the limit and where, never the content. A template
body as built here::

    {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "+573001230001",
     "type": "template", "biz_opaque_callback_data": "42",
     "template": {"name": "appointment_reminder", "language": {"code": "es"},
                  "components": [
                      {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, ...]},
                      {"type": "button", "sub_type": "quick_reply", "index": "0",
                       "parameters": [{"type": "payload", "payload": "confirm.k3Jx9"}]}]}}

``Notification.content`` shapes by kind (decided by the lead):

* ``template``: ``{"name", "language", "header": [str]?, "body": [str] | {name: str},
  "buttons": [{"index", "sub_type": "quick_reply", "payload"} | {"index", "sub_type": "url",
  "text"}]}``
* ``text``: ``{"body", "preview_url"?}``
* ``buttons``: ``{"body", "header"?, "footer"?, "buttons": [{"id", "title"}]}`` (≤ 3)
* ``list``: ``{"body", "button", "header"?, "footer"?, "sections": [{"title", "rows": [{"id",
  "title", "description"?}]}]}`` (≤ 10 rows in total)

Any kind may carry ``"reply_to": wamid`` (sent as ``context.message_id``).
"""

from __future__ import annotations

__all__ = ["LIMITS", "build_message", "build_read_receipt", "is_e164"]

import re
from collections.abc import Mapping, Sequence
from typing import Any

from bridge.errors import MessageRejected
from bridge.ports import Notification

#: Meta's limits, by the name a :class:`MessageRejected` reports (reference §1.1-§1.4).
LIMITS: Mapping[str, int] = {
    "callback_data": 512,
    "text.body": 4096,
    "template.name": 512,
    "template.header_param": 60,
    "template.body_param": 1024,
    "template.payload": 256,
    "template.url_suffix": 2000,
    "template.buttons": 10,
    "buttons.body": 1024,
    "buttons.header": 60,
    "buttons.footer": 60,
    "buttons.count": 3,
    "buttons.id": 256,
    "buttons.title": 20,
    "list.body": 4096,
    "list.header": 60,
    "list.footer": 60,
    "list.button": 20,
    "list.sections": 10,
    "list.rows": 10,
    "list.section_title": 24,
    "list.row_id": 200,
    "list.row_title": 24,
    "list.row_description": 72,
}

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_TEMPLATE_NAME = re.compile(r"[a-z0-9_]+")
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Za-z]{2,4})?")
_PARAM_NAME = re.compile(r"[a-z][a-z0-9_]*")


def is_e164(value: str) -> bool:
    """True for ``+`` and 7-15 digits, the only ``to`` we send (reference §1.1)."""
    return bool(_E164.fullmatch(value))


def _reject(limit: str, where: str, outbox_id: int) -> MessageRejected:
    return MessageRejected("limit_exceeded", f"outbox {outbox_id}: {where} breaks limit {limit}")


def _bad(where: str, what: str, outbox_id: int) -> MessageRejected:
    return MessageRejected("invalid_content", f"outbox {outbox_id}: {where}: {what}")


class _Checker:
    """Reads ``Notification.content`` with type checks and limits; errors name the path."""

    def __init__(self, outbox_id: int) -> None:
        self.outbox_id = outbox_id

    def text(self, data: Mapping[str, Any], key: str, where: str, limit: str) -> str:
        """A required non-empty string within ``limit``."""
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            raise _bad(where, "must be a non-empty string", self.outbox_id)
        self.length(value, where, limit)
        return value

    def optional(self, data: Mapping[str, Any], key: str, where: str, limit: str) -> str | None:
        """An optional string (None when absent) within ``limit``."""
        if data.get(key) is None:
            return None
        return self.text(data, key, where, limit)

    def length(self, value: str, where: str, limit: str) -> None:
        if len(value) > LIMITS[limit]:
            raise _reject(f"{limit} ≤ {LIMITS[limit]}", where, self.outbox_id)

    def items(self, data: Mapping[str, Any], key: str, where: str) -> list[Mapping[str, Any]]:
        value = data.get(key)
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise _bad(where, "must be a list", self.outbox_id)
        out: list[Mapping[str, Any]] = []
        for index, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise _bad(f"{where}[{index}]", "must be an object", self.outbox_id)
            out.append(item)
        return out

    def count(self, items: Sequence[object], where: str, limit: str, *, minimum: int = 1) -> None:
        if len(items) < minimum:
            raise _bad(where, f"needs at least {minimum}", self.outbox_id)
        if len(items) > LIMITS[limit]:
            raise _reject(f"{limit} ≤ {LIMITS[limit]}", where, self.outbox_id)


def build_message(notification: Notification) -> dict[str, Any]:
    """Build the JSON body for one notification, checking every limit first.

    Args:
        notification: what the relay wants sent.

    Returns:
        The request body for ``POST /{version}/{phone-number-id}/messages``.

    Raises:
        MessageRejected: a limit is broken (``limit_exceeded``, naming the limit), ``to`` is not
            E.164 with ``+``, or the content does not have the shape of its kind
            (``invalid_content``).
    """
    check = _Checker(notification.outbox_id)
    if not is_e164(notification.to):
        raise MessageRejected(
            "invalid_recipient", f"outbox {notification.outbox_id}: to is not E.164 with +"
        )
    callback = str(notification.outbox_id)
    check.length(callback, "biz_opaque_callback_data", "callback_data")
    content = notification.content
    body: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": notification.to,
    }
    if notification.kind == "template":
        body["type"] = "template"
        body["template"] = _template(check, content)
    elif notification.kind == "text":
        text = check.text(content, "body", "text.body", "text.body")
        text_obj: dict[str, Any] = {"body": text}
        preview = content.get("preview_url")
        if preview is not None:
            if not isinstance(preview, bool):
                raise _bad("text.preview_url", "must be a boolean", notification.outbox_id)
            text_obj["preview_url"] = preview
        body["type"] = "text"
        body["text"] = text_obj
    elif notification.kind == "buttons":
        body["type"] = "interactive"
        body["interactive"] = _buttons(check, content)
    elif notification.kind == "list":
        body["type"] = "interactive"
        body["interactive"] = _list(check, content)
    else:
        raise _bad("kind", f"unknown kind {notification.kind!r}", notification.outbox_id)
    reply_to = content.get("reply_to")
    if reply_to is not None:
        if not isinstance(reply_to, str) or not reply_to:
            raise _bad("reply_to", "must be a wamid string", notification.outbox_id)
        body["context"] = {"message_id": reply_to}
    body["biz_opaque_callback_data"] = callback
    return body


def build_read_receipt(wamid: str) -> dict[str, Any]:
    """The body that marks an inbound message as read (reference §1.5)."""
    return {"messaging_product": "whatsapp", "status": "read", "message_id": wamid}


def _template(check: _Checker, content: Mapping[str, Any]) -> dict[str, Any]:
    name = check.text(content, "name", "template.name", "template.name")
    if not _TEMPLATE_NAME.fullmatch(name):
        raise _bad("template.name", "must be lowercase letters, digits, _", check.outbox_id)
    language = content.get("language")
    if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
        raise _bad("template.language", "must be a code such as es or en_US", check.outbox_id)
    components: list[dict[str, Any]] = []
    if content.get("header") is not None:
        header = content["header"]
        if not isinstance(header, Sequence) or isinstance(header, str):
            raise _bad("template.header", "must be a list of strings", check.outbox_id)
        params = []
        for index, value in enumerate(header):
            where = f"template.header[{index}]"
            params.append(_text_param(check, value, where, "template.header_param"))
        if params:
            components.append({"type": "header", "parameters": params})
    raw_body = content.get("body")
    if raw_body is not None:
        params = []
        if isinstance(raw_body, Mapping):
            for key, value in raw_body.items():
                where = f"template.body[{key}]"
                if not isinstance(key, str) or not _PARAM_NAME.fullmatch(key):
                    raise _bad(where, "parameter names are lowercase with _", check.outbox_id)
                param = _text_param(check, value, where, "template.body_param")
                params.append({"type": "text", "parameter_name": key, "text": param["text"]})
        elif isinstance(raw_body, Sequence) and not isinstance(raw_body, str):
            for index, value in enumerate(raw_body):
                where = f"template.body[{index}]"
                params.append(_text_param(check, value, where, "template.body_param"))
        else:
            raise _bad("template.body", "must be a list or an object", check.outbox_id)
        if params:
            components.append({"type": "body", "parameters": params})
    if content.get("buttons") is not None:
        buttons = check.items(content, "buttons", "template.buttons")
        check.count(buttons, "template.buttons", "template.buttons", minimum=0)
        seen: set[int] = set()
        for index, button in enumerate(buttons):
            components.append(_template_button(check, button, f"template.buttons[{index}]", seen))
    template: dict[str, Any] = {"name": name, "language": {"code": language}}
    if components:
        template["components"] = components
    return template


def _text_param(check: _Checker, value: object, where: str, limit: str) -> dict[str, Any]:
    if not isinstance(value, str) or not value.strip():
        # Meta rejects empty parameters (131008); refuse them here with the place named.
        raise _bad(where, "must be a non-empty string", check.outbox_id)
    check.length(value, where, limit)
    return {"type": "text", "text": value}


def _template_button(
    check: _Checker, button: Mapping[str, Any], where: str, seen: set[int]
) -> dict[str, Any]:
    index = button.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 10:
        raise _bad(f"{where}.index", "must be an integer 0-9", check.outbox_id)
    if index in seen:
        raise _bad(f"{where}.index", "duplicate button index", check.outbox_id)
    seen.add(index)
    sub_type = button.get("sub_type")
    if sub_type == "quick_reply":
        payload = check.text(button, "payload", f"{where}.payload", "template.payload")
        parameter: dict[str, Any] = {"type": "payload", "payload": payload}
    elif sub_type == "url":
        suffix = check.text(button, "text", f"{where}.text", "template.url_suffix")
        parameter = {"type": "text", "text": suffix}
    else:
        raise _bad(f"{where}.sub_type", "must be quick_reply or url", check.outbox_id)
    # Meta's and courier's examples send the index as a string.
    return {"type": "button", "sub_type": sub_type, "index": str(index), "parameters": [parameter]}


def _interactive_frame(check: _Checker, content: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    frame: dict[str, Any] = {}
    header = check.optional(content, "header", f"{prefix}.header", f"{prefix}.header")
    if header is not None:
        frame["header"] = {"type": "text", "text": header}
    frame["body"] = {"text": check.text(content, "body", f"{prefix}.body", f"{prefix}.body")}
    footer = check.optional(content, "footer", f"{prefix}.footer", f"{prefix}.footer")
    if footer is not None:
        frame["footer"] = {"text": footer}
    return frame


def _buttons(check: _Checker, content: Mapping[str, Any]) -> dict[str, Any]:
    frame = _interactive_frame(check, content, "buttons")
    buttons = check.items(content, "buttons", "buttons.buttons")
    check.count(buttons, "buttons.buttons", "buttons.count")
    ids: set[str] = set()
    titles: set[str] = set()
    out = []
    for index, button in enumerate(buttons):
        where = f"buttons.buttons[{index}]"
        button_id = check.text(button, "id", f"{where}.id", "buttons.id")
        title = check.text(button, "title", f"{where}.title", "buttons.title")
        # Meta counts ids differing only by trailing spaces as duplicates (pywa 1.7.1).
        if button_id.rstrip() in ids:
            raise _bad(f"{where}.id", "duplicate button id", check.outbox_id)
        if title in titles:
            raise _bad(f"{where}.title", "button titles must be unique", check.outbox_id)
        ids.add(button_id.rstrip())
        titles.add(title)
        out.append({"type": "reply", "reply": {"id": button_id, "title": title}})
    return {"type": "button", **frame, "action": {"buttons": out}}


def _list(check: _Checker, content: Mapping[str, Any]) -> dict[str, Any]:
    frame = _interactive_frame(check, content, "list")
    label = check.text(content, "button", "list.button", "list.button")
    sections = check.items(content, "sections", "list.sections")
    check.count(sections, "list.sections", "list.sections")
    total_rows = 0
    ids: set[str] = set()
    out_sections = []
    for s_index, section in enumerate(sections):
        where = f"list.sections[{s_index}]"
        # Meta's docs call section titles required; one untitled section is accepted in practice.
        if len(sections) > 1:
            title: str | None = check.text(section, "title", f"{where}.title", "list.section_title")
        else:
            title = check.optional(section, "title", f"{where}.title", "list.section_title")
        rows = check.items(section, "rows", f"{where}.rows")
        total_rows += len(rows)
        check.count(rows, f"{where}.rows", "list.rows")
        if total_rows > LIMITS["list.rows"]:
            raise _reject(f"list.rows ≤ {LIMITS['list.rows']} in total", "list", check.outbox_id)
        out_rows = []
        for r_index, row in enumerate(rows):
            rwhere = f"{where}.rows[{r_index}]"
            row_id = check.text(row, "id", f"{rwhere}.id", "list.row_id")
            if row_id in ids:
                raise _bad(f"{rwhere}.id", "duplicate row id", check.outbox_id)
            ids.add(row_id)
            out_row = {
                "id": row_id,
                "title": check.text(row, "title", f"{rwhere}.title", "list.row_title"),
            }
            description = check.optional(
                row, "description", f"{rwhere}.description", "list.row_description"
            )
            if description is not None:
                out_row["description"] = description
            out_rows.append(out_row)
        out_section: dict[str, Any] = {"rows": out_rows}
        if title is not None:
            out_section = {"title": title, "rows": out_rows}
        out_sections.append(out_section)
    return {"type": "list", **frame, "action": {"button": label, "sections": out_sections}}
