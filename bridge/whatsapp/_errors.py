"""Graph API errors: one table from ``error.code`` to what the relay does about it.

Implements reference whatsapp.md §2 (errors), above all the §2.3 code table. Meta says to key on
``error.code`` (plus ``error_data.details``), never on HTTP status or title text; titles are being
deprecated and HTTP statuses vary by source. The synchronous envelope (§2.1)::

    {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
               "error_data": {"messaging_product": "whatsapp", "details": "..."},
               "error_subcode": 2494055, "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}}

Each code maps to an :class:`Action` (retry later with a delay, retry never with a reason, or
alert the operator) and to the :mod:`bridge.errors` class whose *type* tells the relay whether to
retry. Exception messages carry our reason and the code, never Graph's ``message`` or
``details`` (they can echo phone numbers).
"""

from __future__ import annotations

__all__ = [
    "ERROR_TABLE",
    "Action",
    "ErrorRule",
    "classify_graph_error",
    "error_for_code",
    "parse_retry_after",
    "rule_for",
]

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import orjson

from bridge.errors import (
    ChannelConfigInvalid,
    ChannelThrottled,
    ChannelUnavailable,
    MessageRejected,
    RecipientUnreachable,
    SendError,
)


class Action(enum.Enum):
    """What the relay does with a failed send."""

    RETRY_LATER = "retry-later"  #: transient: try again after ``delay`` seconds
    RETRY_NEVER = "retry-never"  #: this message will never go through as it is
    ALERT = "alert-the-operator"  #: fail this message and page someone: config, account, template


@dataclass(frozen=True, kw_only=True, slots=True)
class ErrorRule:
    """One row of the table.

    Attributes:
        code: Graph ``error.code``.
        action: what to do.
        error: the :mod:`bridge.errors` class raised for it.
        short: our short code (``throttled``, ``outside_window``...), the ``SendError.code``.
        reason: what it means, in our words (safe to log).
        delay: seconds to wait before retrying (``RETRY_LATER`` only).
    """

    code: int
    action: Action
    error: type[SendError]
    short: str
    reason: str
    delay: float | None = None

    @property
    def alert(self) -> bool:
        """True when an operator must act."""
        return self.action is Action.ALERT


def _rules() -> dict[int, ErrorRule]:
    later, never, alert = Action.RETRY_LATER, Action.RETRY_NEVER, Action.ALERT
    rows: list[tuple[tuple[int, ...], Action, type[SendError], str, str, float | None]] = [
        # throughput and rate limits
        (
            (130429,),
            later,
            ChannelThrottled,
            "throttled",
            "per-number throughput exceeded; pause all sends briefly",
            1.0,
        ),
        (
            (131056,),
            later,
            ChannelThrottled,
            "pair_rate_limited",
            "too many messages to this patient; back off this patient only (4^x s)",
            1.0,
        ),
        ((4,), later, ChannelThrottled, "throttled", "app-level Graph call-rate limit", 60.0),
        ((80007,), later, ChannelThrottled, "throttled", "WABA-level rate limit", 300.0),
        ((17, 613), later, ChannelThrottled, "throttled", "Graph request-rate limit", 60.0),
        # transient provider faults
        ((1, 2), later, ChannelUnavailable, "unavailable", "Graph unknown error or downtime", 10.0),
        (
            (131016,),
            later,
            ChannelUnavailable,
            "unavailable",
            "service temporarily unavailable",
            30.0,
        ),
        (
            (131057,),
            later,
            ChannelUnavailable,
            "unavailable",
            "account in maintenance mode (throughput upgrade)",
            60.0,
        ),
        (
            (131000,),
            later,
            ChannelUnavailable,
            "unavailable",
            "unknown send failure; retried a limited number of times",
            30.0,
        ),
        (
            (131053,),
            later,
            ChannelUnavailable,
            "media_upload_failed",
            "media upload failed; retried a few times",
            30.0,
        ),
        # this recipient cannot get it
        (
            (131026,),
            never,
            RecipientUnreachable,
            "undeliverable",
            "not a WhatsApp user, terms not accepted or client too old",
            None,
        ),
        (
            (131049,),
            never,
            RecipientUnreachable,
            "engagement_cap",
            "per-user marketing cap; wait at least 24 h",
            None,
        ),
        (
            (131050,),
            never,
            RecipientUnreachable,
            "opted_out_marketing",
            "user stopped marketing messages from us",
            None,
        ),
        (
            (130472,),
            never,
            RecipientUnreachable,
            "experiment",
            "user is in a Meta experiment",
            None,
        ),
        ((130403,), never, RecipientUnreachable, "blocked_by_us", "we blocked this user", None),
        # the request itself is wrong
        (
            (131047,),
            never,
            MessageRejected,
            "outside_window",
            "more than 24 h since the patient wrote; send a template instead",
            None,
        ),
        ((131051,), never, MessageRejected, "unsupported_type", "unsupported message type", None),
        ((131052,), never, MessageRejected, "media_download_failed", "media download failed", None),
        (
            (131008, 131009, 100, 135000),
            never,
            MessageRejected,
            "invalid_parameter",
            "missing, invalid or unsupported parameter",
            None,
        ),
        ((131021,), never, MessageRejected, "sender_is_recipient", "sender equals recipient", None),
        (
            (137000,),
            never,
            MessageRejected,
            "identity_mismatch",
            "recipient identity key hash mismatch",
            None,
        ),
        # fail and tell an operator: templates
        (
            (132000,),
            alert,
            MessageRejected,
            "template_param_count",
            "template parameter count differs from the approved template",
            None,
        ),
        (
            (132001,),
            alert,
            MessageRejected,
            "template_missing",
            "template missing in that language or not approved",
            None,
        ),
        ((132005,), alert, MessageRejected, "template_too_long", "translated text too long", None),
        ((132007,), alert, MessageRejected, "template_policy", "template violates policy", None),
        (
            (132012,),
            alert,
            MessageRejected,
            "template_param_format",
            "parameter format does not match the template",
            None,
        ),
        (
            (132015, 132016),
            alert,
            MessageRejected,
            "template_paused",
            "template paused or disabled for low quality",
            None,
        ),
        (
            (131063,),
            alert,
            MessageRejected,
            "marketing_disabled",
            "marketing templates disabled for this WABA",
            None,
        ),
        # fail and tell an operator: this recipient, but a setup problem
        (
            (131030,),
            alert,
            RecipientUnreachable,
            "not_allowed_recipient",
            "recipient not in the test number's allowed list",
            None,
        ),
        (
            (130497,),
            alert,
            RecipientUnreachable,
            "country_restricted",
            "messaging to this country is restricted",
            None,
        ),
        # fail and tell an operator: account, credentials, quality
        (
            (0, 190),
            alert,
            ChannelConfigInvalid,
            "auth_failed",
            "access token invalid or expired; rotate it",
            None,
        ),
        (
            (3, 10, 131005, *range(200, 300)),
            alert,
            ChannelConfigInvalid,
            "permission_denied",
            "permission missing or removed",
            None,
        ),
        (
            (131031, 368),
            alert,
            ChannelConfigInvalid,
            "account_restricted",
            "account locked or policy-restricted",
            None,
        ),
        ((131042,), alert, ChannelConfigInvalid, "billing", "payment method problem", None),
        (
            (131045, 133010),
            alert,
            ChannelConfigInvalid,
            "number_not_registered",
            "phone number not registered",
            None,
        ),
        (
            (133016,),
            alert,
            ChannelConfigInvalid,
            "registration_limited",
            "too many register/deregister attempts",
            None,
        ),
        (
            (131048,),
            alert,
            ChannelConfigInvalid,
            "spam_rate_limited",
            "number restricted after blocks or reports (quality incident)",
            None,
        ),
        (
            (131064,),
            alert,
            ChannelConfigInvalid,
            "messaging_limit_cut",
            "messaging limit lowered after template mis-classification",
            None,
        ),
    ]
    table: dict[int, ErrorRule] = {}
    for codes, action, error, short, reason, delay in rows:
        for code in codes:
            table[code] = ErrorRule(
                code=code, action=action, error=error, short=short, reason=reason, delay=delay
            )
    return table


#: Every code of reference §2.3 (ranges expanded) to its rule.
ERROR_TABLE: Mapping[int, ErrorRule] = _rules()


def rule_for(code: int) -> ErrorRule | None:
    """The rule for a Graph error code, or None when the table does not know it."""
    return ERROR_TABLE.get(code)


def error_for_code(
    code: int, *, http_status: int | None = None, retry_after: float | None = None
) -> SendError:
    """Build the exception for a Graph error code (also used for ``failed`` status webhooks).

    Args:
        code: Graph ``error.code``.
        http_status: only consulted for codes the table does not know.
        retry_after: seconds from a ``Retry-After`` header; overrides the rule's delay.

    Returns:
        A :class:`~bridge.errors.SendError` subclass with ``provider_code`` and ``retry_after``;
        ``alert`` is True for alert-the-operator codes.
    """
    rule = rule_for(code)
    if rule is None:
        # Unknown code: fall back on the HTTP status, the only hint left (reference §2.1).
        if http_status == 429:
            return ChannelThrottled(
                "throttled",
                "unknown Graph code with HTTP 429",
                provider_code=code,
                retry_after=retry_after if retry_after is not None else 1.0,
            )
        if http_status is not None and http_status >= 500:
            return ChannelUnavailable(
                "unavailable",
                f"unknown Graph code with HTTP {http_status}",
                provider_code=code,
                retry_after=retry_after,
            )
        exc: SendError = MessageRejected(
            "unknown_graph_error", "Graph error code not in the table", provider_code=code
        )
        exc.alert = True
        return exc
    delay = retry_after if retry_after is not None else rule.delay
    exc = rule.error(
        rule.short,
        rule.reason,
        provider_code=code,
        retry_after=delay if rule.action is Action.RETRY_LATER else None,
    )
    if rule.alert:
        # MessageRejected/RecipientUnreachable are not alerting by class; these codes are.
        exc.alert = True
    return exc


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent.

    Args:
        value: the header value.
        now: the current time for HTTP dates (defaults to the wall clock).
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify_graph_error(status: int, body: bytes, retry_after: str | None) -> SendError:
    """Turn a non-2xx Graph response into the right :mod:`bridge.errors` exception.

    Args:
        status: HTTP status.
        body: the raw response body.
        retry_after: the ``Retry-After`` header, if any.

    Returns:
        The exception to raise (the caller raises it). A JSON body with ``error.code`` goes
        through :data:`ERROR_TABLE`; a body without one falls back on the status: 429 →
        :class:`~bridge.errors.ChannelThrottled`, 5xx → :class:`~bridge.errors.ChannelUnavailable`,
        anything else → :class:`~bridge.errors.MessageRejected` (``unparseable_response``).
    """
    delay = parse_retry_after(retry_after)
    code = _graph_code(body)
    if code is not None:
        return error_for_code(code, http_status=status, retry_after=delay)
    if status == 429:
        return ChannelThrottled(
            "throttled",
            "HTTP 429 without a Graph error body",
            retry_after=delay if delay is not None else 1.0,
        )
    if status >= 500:
        return ChannelUnavailable(
            "unavailable", f"HTTP {status} without a Graph error body", retry_after=delay
        )
    return MessageRejected("unparseable_response", f"HTTP {status} with an unparseable body")


def _graph_code(body: bytes) -> int | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code
    if isinstance(code, str) and code.strip().lstrip("-").isdigit():
        return int(code.strip())
    return None
