"""Opaque reply tokens for buttons, and expiring portal tokens for result links.

A button payload is ``"<intent>.<token>"`` (``bridge.domain.intents``). The token names the
outbox row that carried the button — never an EHR identifier — and is signed with HMAC-SHA256
over the intent, the row id and an optional suffix (``~yes``, ``~3``), so a patient (or anyone
who sees the payload) cannot turn "confirm row 12" into "cancel row 13". Tokens are short:
WhatsApp echoes them in every tap.

Portal tokens go in the results-ready template's URL button: the result id and an expiry,
signed; the portal verifies them with the same key. They carry no result content.
"""

from __future__ import annotations

__all__ = ["PortalTokens", "ReplyToken", "ReplyTokens"]

import base64
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

#: Bytes of MAC kept in a reply token (80 bits: forging one is not practical by guessing).
_MAC_BYTES = 10


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class ReplyToken:
    """A verified token: the outbox row it names and its suffix (or None)."""

    row_id: int
    suffix: str | None


class ReplyTokens:
    """Issue and verify reply tokens with one site key."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, intent: str, row_id: int, suffix: str | None) -> str:
        material = f"{intent}|{row_id}|{suffix or ''}".encode()
        return _b64(hmac.new(self._key, material, hashlib.sha256).digest()[:_MAC_BYTES])

    def payload(self, intent: str, row_id: int, suffix: str | None = None) -> str:
        """The full button payload ``"<intent>.<rowid-hex>-<mac>[~suffix]"``."""
        token = f"{row_id:x}-{self._mac(intent, row_id, suffix)}"
        return f"{intent}.{token}~{suffix}" if suffix else f"{intent}.{token}"

    def verify(self, intent: str, token: str) -> ReplyToken | None:
        """The row and suffix a token names, or None when it is malformed or forged."""
        body, _, suffix = token.partition("~")
        row_hex, sep, mac = body.partition("-")
        if not sep:
            return None
        try:
            row_id = int(row_hex, 16)
        except ValueError:
            return None
        expected = self._mac(intent, row_id, suffix or None)
        if not hmac.compare_digest(mac, expected):
            return None
        return ReplyToken(row_id=row_id, suffix=suffix or None)


class PortalTokens:
    """Signed, expiring tokens for the patient portal link."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def issue(self, result_id: str, expires: datetime) -> str:
        """``<b64(result_id|expiry)>.<mac>``: opaque to the patient, checkable by the portal."""
        body = _b64(f"{result_id}|{int(expires.timestamp())}".encode())
        mac = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:16])
        return f"{body}.{mac}"

    def verify(self, token: str, now: datetime) -> str | None:
        """The result id, or None when forged, malformed or expired."""
        body, _, mac = token.partition(".")
        expected = _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:16])
        if not mac or not hmac.compare_digest(mac, expected):
            return None
        try:
            result_id, _, expiry = _unb64(body).decode().rpartition("|")
            expires = datetime.fromtimestamp(int(expiry), UTC)
        except (ValueError, UnicodeDecodeError):
            return None
        return result_id if now < expires else None
