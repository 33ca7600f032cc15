"""The Graph error table and ``classify_graph_error``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.errors import (
    ChannelConfigInvalid,
    ChannelThrottled,
    ChannelUnavailable,
    MessageRejected,
    RecipientUnreachable,
    SendError,
)
from bridge.whatsapp._errors import (
    ERROR_TABLE,
    Action,
    classify_graph_error,
    error_for_code,
    parse_retry_after,
)

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "whatsapp"
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "whatsapp.md"


def envelope(code: object, **extra: object) -> bytes:
    error = {"message": f"(#{code}) title", "type": "OAuthException", "code": code}
    error.update(extra)
    return json.dumps({"error": error}).encode()


def reference_codes() -> set[int]:
    """Every code in the §2.3 table of the reference, ranges expanded."""
    text = REFERENCE.read_text()
    section = text[text.index("### 2.3") : text.index("## 3. Webhooks")]
    codes: set[int] = set()
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| code"):
            continue
        cell = line.split("|")[1]
        for start, end in re.findall(r"(\d+)-(\d+)", cell):
            codes.update(range(int(start), int(end) + 1))
        cell = re.sub(r"\d+-\d+", "", cell)
        codes.update(int(c) for c in re.findall(r"\d+", cell))
    return codes


@dataclass(frozen=True)
class ErrorCase:
    label: str
    status: int
    body: bytes
    retry_after: str | None
    error: type[SendError]
    provider_code: int | None
    retryable: bool
    alert: bool
    retry_after_s: float | None = None


CASES = [
    ErrorCase(
        "130429 at 400 is throttled with its delay",
        400,
        envelope(130429),
        None,
        ChannelThrottled,
        130429,
        True,
        False,
        1.0,
    ),
    ErrorCase(
        "130429 honours retry after",
        400,
        envelope(130429),
        "7",
        ChannelThrottled,
        130429,
        True,
        False,
        7.0,
    ),
    ErrorCase(
        "131056 pair limit is throttled",
        400,
        envelope(131056),
        None,
        ChannelThrottled,
        131056,
        True,
        False,
        1.0,
    ),
    ErrorCase(
        "code 4 app rate limit", 403, envelope(4), None, ChannelThrottled, 4, True, False, 60.0
    ),
    ErrorCase(
        "131026 is unreachable",
        400,
        envelope(131026),
        None,
        RecipientUnreachable,
        131026,
        False,
        False,
    ),
    ErrorCase(
        "131047 outside window is rejected",
        400,
        envelope(131047),
        None,
        MessageRejected,
        131047,
        False,
        False,
    ),
    ErrorCase(
        "132001 template missing alerts",
        404,
        envelope(132001),
        None,
        MessageRejected,
        132001,
        False,
        True,
    ),
    ErrorCase(
        "190 expired token alerts",
        401,
        envelope(190, error_subcode=463),
        None,
        ChannelConfigInvalid,
        190,
        False,
        True,
    ),
    ErrorCase(
        "code as a string is read",
        400,
        envelope("131026"),
        None,
        RecipientUnreachable,
        131026,
        False,
        False,
    ),
    ErrorCase(
        "131000 at 500 is unavailable",
        500,
        envelope(131000),
        None,
        ChannelUnavailable,
        131000,
        True,
        False,
        30.0,
    ),
    ErrorCase(
        "known code ignores http 429",
        429,
        envelope(131026),
        None,
        RecipientUnreachable,
        131026,
        False,
        False,
    ),
    ErrorCase(
        "unknown code at 429 is throttled",
        429,
        envelope(999999),
        None,
        ChannelThrottled,
        999999,
        True,
        False,
        1.0,
    ),
    ErrorCase(
        "unknown code at 503 is unavailable",
        503,
        envelope(999999),
        "2",
        ChannelUnavailable,
        999999,
        True,
        False,
        2.0,
    ),
    ErrorCase(
        "unknown code at 400 is rejected and alerts",
        400,
        envelope(999999),
        None,
        MessageRejected,
        999999,
        False,
        True,
    ),
    ErrorCase(
        "non json 500 is unavailable",
        500,
        b"<html>Bad Gateway</html>",
        None,
        ChannelUnavailable,
        None,
        True,
        False,
    ),
    ErrorCase(
        "non json 502 honours retry after",
        502,
        b"Bad Gateway",
        "3",
        ChannelUnavailable,
        None,
        True,
        False,
        3.0,
    ),
    ErrorCase(
        "non json 429 is throttled",
        429,
        b"slow down",
        None,
        ChannelThrottled,
        None,
        True,
        False,
        1.0,
    ),
    ErrorCase(
        "unparseable 400 is rejected",
        400,
        b"\x00garbage",
        None,
        MessageRejected,
        None,
        False,
        False,
    ),
    ErrorCase(
        "json without error object at 400 is rejected",
        400,
        b'{"ok": false}',
        None,
        MessageRejected,
        None,
        False,
        False,
    ),
    ErrorCase(
        "boolean code is not a code", 400, envelope(True), None, MessageRejected, None, False, False
    ),
]


class TestClassifyGraphError:
    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
    def test_response_maps_to_the_right_error(self, case: ErrorCase) -> None:
        exc = classify_graph_error(case.status, case.body, case.retry_after)

        assert type(exc) is case.error
        assert exc.provider_code == case.provider_code
        assert exc.retryable is case.retryable
        assert exc.alert is case.alert
        assert exc.retry_after == case.retry_after_s

    def test_full_corpus_envelope_130429(self):
        body = (CORPUS / "error_response_130429_full__metadocs.json").read_bytes()
        exc = classify_graph_error(400, body, None)
        assert isinstance(exc, ChannelThrottled)
        assert exc.provider_code == 130429

    @pytest.mark.parametrize(
        ("file", "error", "alert"),
        [
            ("error_object_131047_reengagement__pywa.json", MessageRejected, False),
            ("error_object_131053_media_upload__pywa.json", ChannelUnavailable, False),
            ("error_object_190_expired_token__pywa.json", ChannelConfigInvalid, True),
        ],
    )
    def test_corpus_inner_error_objects_wrapped_in_an_envelope(self, file, error, alert):
        inner = json.loads((CORPUS / file).read_text())
        body = json.dumps({"error": inner}).encode()

        exc = classify_graph_error(400, body, None)

        assert type(exc) is error
        assert exc.provider_code == inner["code"]
        assert exc.alert is alert

    def test_message_never_echoes_graph_text(self):
        body = envelope(131026, error_data={"details": "+573001230001 is not valid"})
        exc = classify_graph_error(400, body, None)
        assert "+573001230001" not in str(exc)
        assert "131026" in str(exc)


class TestTable:
    def test_every_reference_code_is_in_the_table(self):
        codes = reference_codes()
        assert len(codes) > 100  # 200-299 expanded plus ~50 others
        assert codes - set(ERROR_TABLE) == set()

    def test_retry_later_rules_have_a_delay_and_a_retryable_error(self):
        for rule in ERROR_TABLE.values():
            if rule.action is Action.RETRY_LATER:
                assert rule.delay is not None and rule.delay > 0, rule.code
                assert rule.error.retryable, rule.code
            else:
                assert not rule.error.retryable, rule.code

    @pytest.mark.parametrize(
        ("code", "action"),
        [
            (130429, Action.RETRY_LATER),
            (131026, Action.RETRY_NEVER),
            (132015, Action.ALERT),
            (250, Action.ALERT),
        ],
    )
    def test_known_actions(self, code, action):
        assert ERROR_TABLE[code].action is action
        assert error_for_code(code).alert is (action is Action.ALERT)


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "seconds"),
        [(None, None), ("", None), ("5", 5.0), ("0.5", 0.5), ("-3", 0.0), ("soon", None)],
    )
    def test_delta_seconds(self, value, seconds):
        assert parse_retry_after(value) == seconds

    def test_http_date(self):
        from datetime import UTC, datetime

        now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
        assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
