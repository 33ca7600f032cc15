"""Graph API error envelopes as the sandbox returns them (reference whatsapp.md §2.1).

Meta answers a refused call with::

    {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
               "error_data": {"messaging_product": "whatsapp",
                              "details": "Cloud API message throughput has been reached."},
               "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}}

``error_subcode`` is not returned from v16.0 on, so the sandbox leaves it out. Token errors
(code 190) carry no ``error_data`` and a plain message, as in the corpus file
``error_object_190_expired_token__pywa.json``.
"""

from __future__ import annotations

import secrets
from typing import Any

#: Titles as Meta's error-code page lists them (keyed by code). Clients must not branch on them.
TITLES: dict[int, str] = {
    1: "An unknown error occurred",
    2: "Service temporarily unavailable",
    100: "Invalid parameter",
    130429: "Rate limit hit",
    131000: "Something went wrong",
    131008: "Required parameter is missing",
    131009: "Parameter value is not valid",
    131026: "Message undeliverable",
    131047: "Re-engagement message",
    131051: "Unsupported message type",
    131056: "(Business Account, Consumer Account) pair rate limit hit",
    132000: "Number of parameters does not match the expected number of params",
    132001: "Template name does not exist in the translation",
    132005: "Translated text too long",
    132012: "Parameter format does not match format in the created template",
    132015: "Template is Paused",
    132016: "Template is Disabled",
    132018: "There's an issue with the parameters in your template",
}

#: Where Meta's error-code page sends readers; echoed in webhook ``errors[].href``.
ERROR_HREF = "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"


def fbtrace_id() -> str:
    """Return a random trace id shaped like Meta's (23 url-safe characters)."""
    return secrets.token_urlsafe(17)[:23]


class GraphError(Exception):
    """A refusal the sandbox answers with a Graph error envelope.

    Args:
        code: The Graph ``error.code``.
        details: ``error_data.details``: names the field and the limit, never a value.
        http_status: HTTP status of the answer (Meta uses 400 for almost everything).
    """

    def __init__(self, code: int, details: str, *, http_status: int = 400) -> None:
        super().__init__(f"graph error {code}")
        self.code = code
        self.details = details
        self.http_status = http_status

    def envelope(self) -> dict[str, Any]:
        """Return the JSON body Meta sends for this error.

        Returns:
            ``{"error": {...}}`` exactly as reference §2.1 shows it.
        """
        return error_envelope(self.code, self.details)


def error_envelope(code: int, details: str) -> dict[str, Any]:
    """Build a synchronous Graph error body.

    Args:
        code: The Graph ``error.code``.
        details: Text for ``error_data.details``.

    Returns:
        The ``{"error": {...}}`` body.
    """
    title = TITLES.get(code, "Unknown error")
    return {
        "error": {
            "message": f"(#{code}) {title}",
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": details},
            "fbtrace_id": fbtrace_id(),
        }
    }


def token_error_envelope() -> dict[str, Any]:
    """Build the body Meta returns for a missing or invalid access token (code 190)."""
    return {
        "error": {
            "message": "Invalid OAuth access token - Cannot parse access token",
            "type": "OAuthException",
            "code": 190,
            "fbtrace_id": fbtrace_id(),
        }
    }


def webhook_error(code: int, details: str) -> dict[str, Any]:
    """Build one ``errors[]`` item of a failed-status webhook (reference §2.2).

    Args:
        code: The error code.
        details: Text for ``error_data.details``.

    Returns:
        ``{code, title, message, error_data: {details}, href}``.
    """
    title = TITLES.get(code, "Unknown error")
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": details},
        "href": ERROR_HREF,
    }
