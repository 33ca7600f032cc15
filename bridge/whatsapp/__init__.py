"""The WhatsApp channel (Cloud API): client, webhook intake, error table, limits, templates.

Public surface, wired by the daemon and the CLI:

* :class:`WhatsAppChannel` (entry point ``bridge.whatsapp:WhatsAppChannel``) and
  :func:`webhook_routes` for ``/webhooks/whatsapp``;
* :func:`inspect` for ``bridge inspect whatsapp FILE --json``;
* :class:`GraphClient`, :func:`classify_graph_error`, :func:`check_templates`,
  :func:`sync_templates` and :data:`ENGINE_TEMPLATES` for ``bridge templates sync|check``;
* the limits (:class:`SendLimits`, :class:`CustomerWindow`, :class:`SendHeld`) for the relay
  and the engine.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bridge.domain import Translation
from bridge.whatsapp._channel import SignatureMismatch, WhatsAppChannel, WhatsAppSettings
from bridge.whatsapp._client import GraphClient
from bridge.whatsapp._errors import (
    ERROR_TABLE,
    Action,
    ErrorRule,
    classify_graph_error,
    error_for_code,
    rule_for,
)
from bridge.whatsapp._limits import (
    CustomerWindow,
    PatientSpacing,
    RateLimiter,
    SendHeld,
    SendLimits,
    TierCap,
    WindowDecision,
)
from bridge.whatsapp._payloads import LIMITS, build_message
from bridge.whatsapp._routes import WEBHOOK_PATH, webhook_routes
from bridge.whatsapp._templates import (
    ENGINE_TEMPLATES,
    Mismatch,
    TemplateSpec,
    check_templates,
    sync_templates,
)
from bridge.whatsapp._webhook import (
    SIGNATURE_HEADER,
    first_phone_number_id,
    parse_webhook_body,
    verify_signature,
)

__all__ = [
    "ENGINE_TEMPLATES",
    "ERROR_TABLE",
    "LIMITS",
    "SIGNATURE_HEADER",
    "WEBHOOK_PATH",
    "Action",
    "CustomerWindow",
    "ErrorRule",
    "GraphClient",
    "Mismatch",
    "PatientSpacing",
    "RateLimiter",
    "SendHeld",
    "SendLimits",
    "SignatureMismatch",
    "TemplateSpec",
    "TierCap",
    "WhatsAppChannel",
    "WhatsAppSettings",
    "WindowDecision",
    "build_message",
    "check_templates",
    "classify_graph_error",
    "error_for_code",
    "first_phone_number_id",
    "inspect",
    "parse_webhook_body",
    "rule_for",
    "sync_templates",
    "verify_signature",
    "webhook_routes",
]


def inspect(payload: bytes) -> Translation:
    """Run one webhook body through the daemon's parser, for ``bridge inspect whatsapp``.

    Args:
        payload: the raw webhook body.

    Returns:
        The translation; ``translation.fatal`` is True when the body is not a WhatsApp webhook
        (the CLI then exits 2 with the first problem's message).
    """
    return parse_webhook_body(payload, received_at=datetime.now(UTC))
