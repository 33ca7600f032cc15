"""WhatsApp webhook bodies: signature check and translation to canonical events.

Implements reference whatsapp.md §3 (webhooks): §3.2 signature over the raw bytes, §3.3 inbound
messages, §3.4 template quick replies, §3.5 interactive replies, §3.6 statuses, §3.7 template
fields, §3.9 business-scoped user ids. One trimmed example::

    {"object": "whatsapp_business_account",
     "entry": [{"id": "<WABA>", "changes": [{"field": "messages", "value": {
         "metadata": {"phone_number_id": "1122334455667"},
         "messages": [{"from": "972987654321", "id": "wamid.x", "timestamp": "1698269027",
                       "type": "button", "button": {"payload": "confirm.k3Jx9", "text": "Confirm"},
                       "context": {"id": "wamid.ours"}}],
         "statuses": [{"id": "wamid.ours", "status": "read", "timestamp": "1698266945",
                       "recipient_id": "972987654321", "biz_opaque_callback_data": "42"}]}}]}]}

:func:`parse_webhook_body` is a pure function of the bytes (event ids are derived from the body
hash and the item's position), so the store can keep the raw body and the engine can re-derive
the same events later. Per-wamid dedupe and status monotonicity happen in the engine
(``bridge.domain.delivery.advance``). Nothing here raises for bad content: every oddity becomes a
:class:`~bridge.domain.Problem`, and only a body that is not JSON or not a WhatsApp webhook at all
is fatal (quarantine).
"""

from __future__ import annotations

__all__ = [
    "SIGNATURE_HEADER",
    "first_phone_number_id",
    "parse_webhook_body",
    "verify_signature",
]

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from bridge.domain import (
    Event,
    Problem,
    ReplyReceived,
    SourceRef,
    StatusUpdated,
    TemplateStatusChanged,
    Translation,
    payload_hash,
)
from bridge.domain.intents import classify_text, parse_button_payload

#: Header Meta signs every POST with: ``sha256=<hex HMAC of the raw body>``.
SIGNATURE_HEADER = "X-Hub-Signature-256"
_CONNECTOR = "whatsapp"
#: Statuses folded by the engine; everything else (``deleted``, ``played``...) is a no-op.
_KNOWN_STATUSES = frozenset({"sent", "delivered", "read", "failed"})
#: Unix timestamps at or above this are milliseconds (courier ``parseTimestamp``).
_MS_THRESHOLD = 1_000_000_000_000


def verify_signature(app_secret: bytes, body: bytes, header: str | None) -> bool:
    """Check ``X-Hub-Signature-256`` against the raw body, in constant time.

    Args:
        app_secret: the Meta app secret (key of the HMAC).
        body: the request body exactly as received; re-serialised JSON will not match.
        header: the header value (``sha256=<hex>``) or None when absent.

    Returns:
        True only when the header is present, well-formed and matches.
    """
    if not header:
        return False
    scheme, sep, received = header.strip().partition("=")
    if not sep or scheme.lower() != "sha256":
        return False
    try:
        received_bytes = received.strip().lower().encode("ascii")
    except UnicodeEncodeError:
        return False
    expected = hmac.new(app_secret, body, hashlib.sha256).hexdigest().encode("ascii")
    return hmac.compare_digest(expected, received_bytes)


@dataclass
class _Parse:
    """Accumulates events and problems while walking one body."""

    body_hash: str
    received_at: datetime
    events: list[Event] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def problem(self, code: str, message: str, where: str, *, fatal: bool = False) -> None:
        self.problems.append(Problem(code=code, message=message, field=where, fatal=fatal))

    def event_id(self, where: str) -> str:
        # Deterministic: the same bytes always give the same event ids.
        return hashlib.sha256(f"{self.body_hash}:{where}".encode()).hexdigest()[:32]

    def timestamp(self, raw: object, where: str) -> datetime:
        """Parse a unix timestamp (string or number, s or ms); fall back to ``received_at``."""
        try:
            value = int(str(raw).strip())
        except ValueError:
            self.problem("timestamp.invalid", "timestamp is not a unix time", where)
            return self.received_at
        if value >= _MS_THRESHOLD:
            value //= 1000
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            self.problem("timestamp.invalid", "timestamp is out of range", where)
            return self.received_at


def parse_webhook_body(body: bytes, *, received_at: datetime) -> Translation:
    """Translate one webhook POST body into canonical events and problems.

    Args:
        body: the raw request body.
        received_at: when the body arrived (timezone-aware); used only where a timestamp is
            missing or unreadable.

    Returns:
        A :class:`~bridge.domain.Translation` whose ``message_id`` is the body's SHA-256 hex.
        A body that is not JSON, or not a ``whatsapp_business_account`` webhook, has one fatal
        problem and no events.
    """
    body_hash = payload_hash(body)
    parse = _Parse(body_hash=body_hash, received_at=received_at.astimezone(UTC))
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        parse.problem("webhook.not_json", "body is not valid JSON", "body", fatal=True)
        return _done(parse)
    if not isinstance(data, dict) or data.get("object") != "whatsapp_business_account":
        parse.problem(
            "webhook.not_whatsapp",
            "body is not a WhatsApp Business Account webhook (object != whatsapp_business_account)",
            "object",
            fatal=True,
        )
        return _done(parse)
    entries = data.get("entry")
    if not isinstance(entries, list):
        parse.problem("webhook.no_entries", "webhook has no entry list", "entry", fatal=True)
        return _done(parse)
    for e_index, entry in enumerate(entries):
        where = f"entry[{e_index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            parse.problem("entry.invalid", "entry has no changes list", where)
            continue
        for c_index, change in enumerate(entry["changes"]):
            _change(parse, entry, change, f"{where}.changes[{c_index}]")
    return _done(parse)


def first_phone_number_id(body: bytes) -> str | None:
    """The ``metadata.phone_number_id`` of the first change carrying one, or None.

    Used as the ``sender`` of the stored inbound message; never raises.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    for entry in _dicts(data.get("entry")):
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if isinstance(value, dict):
                metadata = value.get("metadata")
                if isinstance(metadata, dict) and isinstance(metadata.get("phone_number_id"), str):
                    return str(metadata["phone_number_id"])
    return None


def _done(parse: _Parse) -> Translation:
    return Translation(
        events=tuple(parse.events), problems=tuple(parse.problems), message_id=parse.body_hash
    )


def _dicts(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict)]


def _str(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _change(parse: _Parse, entry: Mapping[str, Any], change: object, where: str) -> None:
    if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
        parse.problem("change.invalid", "change has no value object", where)
        return
    kind = change.get("field")
    value: dict[str, Any] = change["value"]
    if kind == "messages":
        _messages_change(parse, value, f"{where}.value")
    elif kind in (
        "message_template_status_update",
        "template_category_update",
        "message_template_quality_update",
    ):
        _template_change(parse, entry, str(kind), value, f"{where}.value")
    else:
        parse.problem("change.ignored", f"webhook field {kind!r} is not used", f"{where}.field")


# --- field "messages" ------------------------------------------------------------------------


def _messages_change(parse: _Parse, value: dict[str, Any], where: str) -> None:
    for index, error in enumerate(_dicts(value.get("errors"))):
        parse.problem(
            "webhook.error",
            f"WhatsApp reported error code {_error_code(error)} for this number",
            f"{where}.errors[{index}]",
        )
    # With one contact, its BSUID is the fallback identity of a message that has no `from`
    # and no `from_user_id` (reference §3.9).
    lone_user_id: str | None = None
    contacts = _dicts(value.get("contacts"))
    if len(contacts) == 1:
        lone_user_id = _str(contacts[0].get("user_id"))
    for index, message in enumerate(_list(value.get("messages"))):
        _message(parse, message, lone_user_id, f"{where}.messages[{index}]")
    for index, status in enumerate(_list(value.get("statuses"))):
        _status(parse, status, f"{where}.statuses[{index}]")


def _list(value: object) -> list[object]:
    return value if isinstance(value, list) else []


def _error_code(error: Mapping[str, Any]) -> int | None:
    code = error.get("code")
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    if isinstance(code, str) and code.strip().isdigit():
        return int(code.strip())
    return None


def _e164(digits: str | None) -> str | None:
    """``972987654321`` → ``+972987654321``; None when it does not look like a phone number."""
    if digits is None:
        return None
    raw = digits.strip().removeprefix("+")
    if raw.isdigit() and 6 <= len(raw) <= 15:
        return f"+{raw}"
    return None


def _is_group(item: Mapping[str, Any]) -> bool:
    return item.get("recipient_type") == "group" or "group_id" in item


def _message(parse: _Parse, message: object, lone_user_id: str | None, where: str) -> None:
    if not isinstance(message, dict):
        parse.problem("message.invalid", "message is not an object", where)
        return
    wamid = _str(message.get("id"))
    if wamid is None:
        parse.problem("message.no_id", "message has no id (wamid); skipped", f"{where}.id")
        return
    if _is_group(message):
        parse.problem("message.group_ignored", "group messages are not handled; ignored", where)
        return
    sender = _e164(_str(message.get("from")))
    if sender is None:
        sender = _str(message.get("from_user_id")) or _str(message.get("user_id")) or lone_user_id
    if sender is None:
        parse.problem("message.no_sender", "message has neither from nor a user id", where)
        return
    kind = _str(message.get("type")) or "unknown"
    context = message.get("context")
    context_id = _str(context.get("id")) if isinstance(context, dict) else None
    common: dict[str, Any] = {
        "source": SourceRef(connector=_CONNECTOR, message_id=wamid),
        "event_id": parse.event_id(where),
        "occurred_at": parse.timestamp(message.get("timestamp"), f"{where}.timestamp"),
        "message_id": wamid,
        "channel_user": sender,
        "context_id": context_id,
    }
    for index, error in enumerate(_dicts(message.get("errors"))):
        parse.problem(
            "message.error",
            f"WhatsApp reported error code {_error_code(error)} on an inbound {kind} message",
            f"{where}.errors[{index}]",
        )
    if kind == "text":
        _text_message(parse, message, common, where)
    elif kind == "button":
        _button_message(parse, message, common, where)
    elif kind == "interactive":
        _interactive_message(parse, message, common, where)
    elif kind == "system":
        _system_message(parse, message, common, where)
    else:
        # image, audio, sticker, location, reaction, unsupported...: the patient wrote to us
        # (which opens the customer-service window), but there is nothing we can act on.
        parse.events.append(ReplyReceived(**common, intent="unknown", message_type=kind))
        parse.problem(
            "message.unsupported_type",
            f"inbound message type {kind!r} is kept but not interpreted",
            f"{where}.type",
        )


def _text_message(
    parse: _Parse, message: Mapping[str, Any], common: dict[str, Any], where: str
) -> None:
    text_obj = message.get("text")
    body = text_obj.get("body") if isinstance(text_obj, dict) else None
    if not isinstance(body, str):
        parse.problem("message.no_text", "text message has no text.body", f"{where}.text")
        body = ""
    parse.events.append(
        ReplyReceived(**common, intent=classify_text(body), text=body, message_type="text")
    )


def _reply(
    common: dict[str, Any], payload: str | None, label: str | None, message_type: str
) -> ReplyReceived:
    """A button or list tap: our ``intent.token`` payload, else the payload or label as text."""
    parsed = parse_button_payload(payload) if payload else None
    if parsed is not None:
        intent, token = parsed
        return ReplyReceived(
            **common,
            intent=intent,
            token=token,
            choice=payload,
            text=label,
            message_type=message_type,
        )
    intent = classify_text(payload) if payload else "unknown"
    if intent == "unknown" and label:
        intent = classify_text(label)
    return ReplyReceived(
        **common, intent=intent, choice=payload, text=label, message_type=message_type
    )


def _button_message(
    parse: _Parse, message: Mapping[str, Any], common: dict[str, Any], where: str
) -> None:
    button = message.get("button")
    if not isinstance(button, dict):
        parse.problem("message.no_button", "button message has no button object", where)
        button = {}
    payload, label = _str(button.get("payload")), _str(button.get("text"))
    if parse_button_payload(payload or "") is None:
        parse.problem(
            "button.foreign_payload",
            "button payload is not one of ours (<intent>.<token>); treated as text",
            f"{where}.button.payload",
        )
    parse.events.append(_reply(common, payload, label, "button"))


def _interactive_message(
    parse: _Parse, message: Mapping[str, Any], common: dict[str, Any], where: str
) -> None:
    interactive = message.get("interactive")
    sub = _str(interactive.get("type")) if isinstance(interactive, dict) else None
    reply = interactive.get(sub) if isinstance(interactive, dict) and sub else None
    if sub not in ("button_reply", "list_reply") or not isinstance(reply, dict):
        parse.events.append(ReplyReceived(**common, intent="unknown", message_type="interactive"))
        parse.problem(
            "message.unsupported_type",
            f"interactive message of type {sub!r} is kept but not interpreted",
            f"{where}.interactive",
        )
        return
    reply_id, title = _str(reply.get("id")), _str(reply.get("title"))
    if parse_button_payload(reply_id or "") is None:
        parse.problem(
            "button.foreign_payload",
            "reply id is not one of ours (<intent>.<token>); treated as text",
            f"{where}.interactive.{sub}.id",
        )
    parse.events.append(_reply(common, reply_id, title, str(sub)))


def _system_message(
    parse: _Parse, message: Mapping[str, Any], common: dict[str, Any], where: str
) -> None:
    system = message.get("system")
    sub = _str(system.get("type")) if isinstance(system, dict) else None
    new_id: str | None = None
    if isinstance(system, dict):
        new_id = _e164(_str(system.get("wa_id"))) or _str(system.get("user_id"))
    # No canonical event exists for "this patient changed number"; the engine sees a
    # ReplyReceived of message_type "system" whose ``choice`` is the new E.164 (or user id).
    # It is not patient text, so it must not open the customer-service window.
    parse.events.append(
        ReplyReceived(**common, intent="unknown", choice=new_id, message_type="system")
    )
    parse.problem(
        f"system.{sub or 'unknown'}",
        "a WhatsApp user changed their number; update the patient's phone mapping"
        if sub == "user_changed_number"
        else f"system message {sub!r} received",
        f"{where}.system",
    )


# --- statuses --------------------------------------------------------------------------------


def _status(parse: _Parse, status: object, where: str) -> None:
    if not isinstance(status, dict):
        parse.problem("status.invalid", "status is not an object", where)
        return
    wamid = _str(status.get("id"))
    value = _str(status.get("status"))
    if wamid is None or value is None:
        parse.problem("status.incomplete", "status has no id or no status", where)
        return
    if _is_group(status):
        parse.problem("status.group_ignored", "status of a group message; ignored", where)
        return
    if value not in _KNOWN_STATUSES:
        parse.problem("status.unknown", f"status {value!r} is not tracked; no-op", where)
        return
    errors = _dicts(status.get("errors"))
    error_code = _error_code(errors[0]) if errors else None
    if value == "failed" and error_code is None:
        parse.problem("status.failed_without_code", "failed status carries no error code", where)
    recipient = _e164(_str(status.get("recipient_id"))) or _str(status.get("recipient_user_id"))
    parse.events.append(
        StatusUpdated(
            source=SourceRef(connector=_CONNECTOR, message_id=wamid),
            event_id=parse.event_id(where),
            occurred_at=parse.timestamp(status.get("timestamp"), f"{where}.timestamp"),
            message_id=wamid,
            status=value,
            callback=_str(status.get("biz_opaque_callback_data")),
            error_code=error_code,
            recipient=recipient,
        )
    )


# --- template fields -------------------------------------------------------------------------


def _template_change(
    parse: _Parse, entry: Mapping[str, Any], kind: str, value: Mapping[str, Any], where: str
) -> None:
    name = _str(value.get("message_template_name")) or _str(value.get("name"))
    language = _str(value.get("message_template_language")) or _str(value.get("language"))
    template_id = _str(value.get("message_template_id")) or "?"
    if name is None:
        parse.problem("template.no_name", "template update without a template name", where)
        return
    reason: str | None
    if kind == "message_template_status_update":
        status = _str(value.get("event"))
        if status is None:
            parse.problem("template.no_event", "template status update without event", where)
            return
        reason = _str(value.get("reason"))
        other = value.get("other_info")
        if isinstance(other, dict) and _str(other.get("title")):
            # FIRST_PAUSE / SECOND_PAUSE / UNPAUSE say more than reason "NONE".
            reason = _str(other.get("title"))
        if reason == "NONE":
            reason = None
    elif kind == "template_category_update":
        status, reason = "CATEGORY_CHANGED", _str(value.get("new_category"))
    else:
        status = "QUALITY_CHANGED"
        reason = _str(value.get("new_quality_score"))
    time_part = _str(entry.get("time")) or "0"
    parse.events.append(
        TemplateStatusChanged(
            source=SourceRef(
                connector=_CONNECTOR, message_id=f"template:{template_id}:{status}:{time_part}"
            ),
            event_id=parse.event_id(where),
            occurred_at=parse.timestamp(entry["time"], f"{where}.time")
            if "time" in entry
            else parse.received_at,
            name=name,
            language=language,
            status=status,
            reason=reason,
        )
    )
