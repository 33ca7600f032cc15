"""Simulated patients: what a tap or a typed answer looks like when it reaches the bridge.

Shapes follow reference whatsapp.md §3.3 to §3.5 and the corpus files
``webhook_inbound_template_quick_reply_button__*.json`` (type ``button``: ``button.payload`` is
the payload the bridge put on the quick-reply button, or the label when it set none),
``webhook_inbound_interactive_*_reply__pywa.json`` (``interactive.button_reply`` /
``list_reply``) and ``webhook_inbound_text__pywa.json``.

The patient names a button by intent word (``confirm``), label, payload or index; the word is
matched against the labels of every translation of the template, so ``reschedule`` finds the
"Reprogramar" button of the Spanish reminder.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import phonenumbers

from bridge.sandbox._config import PatientScript
from bridge.sandbox._templates import TemplateRegistry

__all__ = [
    "ReplyError",
    "bsuid_for",
    "choose_button",
    "choose_row",
    "contact_for",
    "script_matches",
]


class ReplyError(ValueError):
    """A simulated reply cannot be built; the message says why (no patient data)."""


@functools.lru_cache(maxsize=65_536)
def bsuid_for(wa_id: str) -> str:
    """Return a stable business-scoped user id for a number (reference §3.9).

    Args:
        wa_id: The patient's digits.

    Returns:
        ``<ISO country>.<digits>``, e.g. ``CO.1234...``.
    """
    region = "US"
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse("+" + wa_id)) or "US"
    except phonenumbers.NumberParseException:
        pass
    digest = int(hashlib.sha256(wa_id.encode()).hexdigest()[:16], 16)
    return f"{region}.{digest}"


def contact_for(wa_id: str, name: str) -> dict[str, Any]:
    """Return the ``contacts[]`` entry webhooks carry for a patient.

    Args:
        wa_id: The patient's digits.
        name: Profile name (synthetic).
    """
    return {"profile": {"name": name}, "wa_id": wa_id, "user_id": bsuid_for(wa_id)}


def _matches(word: str, *candidates: str | None) -> bool:
    for cand in candidates:
        if cand is None:
            continue
        c = cand.strip().lower()
        if c and (c == word or c.startswith(word) or word.startswith(c)):
            return True
    return False


def choose_button(record: dict[str, Any], word: str, templates: TemplateRegistry) -> dict[str, Any]:
    """Pick the button a patient taps on one of the bridge's messages.

    Args:
        record: The sent-message record (from the message log).
        word: Intent word, label, payload, id, or index.
        templates: To read the labels of the template's other translations.

    Returns:
        For a template: ``{"payload": ..., "text": label}``; for an interactive message:
        ``{"id": ..., "title": ...}``.

    Raises:
        ReplyError: The message has no button that matches.
    """
    word = word.strip().lower()
    if not word:
        raise ReplyError("button word is empty")
    if record["type"] == "template":
        quick = [b for b in record["buttons"] if b["sub_type"] == "quick_reply"]
        if not quick:
            raise ReplyError("the message has no quick-reply buttons")
        chosen = None
        if word.isdigit():
            chosen = next((b for b in quick if b["index"] == int(word)), None)
        if chosen is None:
            chosen = next((b for b in quick if (b["payload"] or "").lower() == word), None)
        if chosen is None:
            labels: dict[int, list[str]] = {}
            for tpl in templates.translations(record["template"]["name"]):
                for button in tpl.buttons:
                    labels.setdefault(button.index, []).append(button.text)
            chosen = next(
                (b for b in quick if _matches(word, b["label"], *labels.get(b["index"], []))),
                None,
            )
        if chosen is None:
            chosen = next((b for b in quick if word in (b["payload"] or "").lower()), None)
        if chosen is None:
            raise ReplyError("no quick-reply button matches")
        # Meta echoes the label as payload when the send set none (reference §1.2, §7).
        return {"payload": chosen["payload"] or chosen["label"], "text": chosen["label"]}
    if record.get("interactive_type") == "button":
        buttons = record["buttons"]
        if word.isdigit() and int(word) < len(buttons):
            return dict(buttons[int(word)])
        for b in buttons:
            if b["id"].lower() == word or _matches(word, b["title"]):
                return dict(b)
        for b in buttons:
            if word in b["id"].lower():
                return dict(b)
        raise ReplyError("no reply button matches")
    raise ReplyError("the message has no buttons to tap")


def choose_row(record: dict[str, Any], word: str) -> dict[str, Any]:
    """Pick a row of an interactive list.

    Args:
        record: The sent-message record of the list.
        word: Row id, title, or index.

    Returns:
        ``{"id", "title"[, "description"]}``.

    Raises:
        ReplyError: The message is not a list or no row matches.
    """
    if record.get("interactive_type") != "list":
        raise ReplyError("the message is not an interactive list")
    rows = record["rows"]
    key = word.strip()
    chosen = next((r for r in rows if r["id"] == key), None)
    if chosen is None and key.isdigit() and int(key) < len(rows):
        chosen = rows[int(key)]
    if chosen is None:
        chosen = next((r for r in rows if _matches(key.lower(), r["title"])), None)
    if chosen is None:
        raise ReplyError("no list row matches")
    out = {"id": chosen["id"], "title": chosen["title"]}
    if chosen.get("description") is not None:
        out["description"] = chosen["description"]
    return out


def script_matches(script: PatientScript, record: dict[str, Any]) -> bool:
    """Whether a standing script answers this sent message.

    Args:
        script: The script.
        record: The sent-message record.
    """
    if script.to != "*" and "".join(ch for ch in script.to if ch.isdigit()) != record["wa_id"]:
        return False
    if script.on == "*":
        return True
    if record["type"] == "template":
        return bool(script.on == record["template"]["name"])
    return bool(script.on == record["type"])
