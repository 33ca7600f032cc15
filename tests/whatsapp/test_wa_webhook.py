"""Webhook parsing and signatures: every corpus body, synthetic batches, bad input."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.domain import ReplyReceived, StatusUpdated, TemplateStatusChanged, Translation
from bridge.whatsapp import first_phone_number_id, inspect, parse_webhook_body, verify_signature

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "whatsapp"
RECEIVED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET = b"test-app-secret"


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Expected:
    """What one event must look like: its type and the fields that matter."""

    type: str
    fields: dict[str, object] = field(default_factory=dict[str, Any])


@dataclass(frozen=True)
class CorpusCase:
    label: str
    file: str
    events: tuple[Expected, ...]
    problems: tuple[str, ...] = ()


def reply(**fields: object) -> Expected:
    return Expected("reply.received", fields)


def status(**fields: object) -> Expected:
    return Expected("status.updated", fields)


def template(**fields: object) -> Expected:
    return Expected("template.status_changed", fields)


CORPUS_CASES = [
    CorpusCase(
        "inbound image is kept as an unknown reply with a problem",
        "webhook_inbound_image__pywa.json",
        (reply(intent="unknown", message_type="image", channel_user="+972987654321"),),
        ("message.unsupported_type",),
    ),
    CorpusCase(
        "interactive button reply from meta docs classifies its id as text",
        "webhook_inbound_interactive_button_reply__metadocs.json",
        (
            reply(
                intent="cancel",
                token=None,
                choice="cancel-button",
                message_type="button_reply",
                channel_user="+16505551234",
                context_id="wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI3MEM2RUJFNkI0RENGQTVDRjUA",
            ),
        ),
        ("button.foreign_payload",),
    ),
    CorpusCase(
        "interactive button reply from pywa with a foreign id is unknown",
        "webhook_inbound_interactive_button_reply__pywa.json",
        (reply(intent="unknown", choice="callback_data", message_type="button_reply"),),
        ("button.foreign_payload",),
    ),
    CorpusCase(
        "list reply carries its row id and title",
        "webhook_inbound_interactive_list_reply__pywa.json",
        (
            reply(
                intent="unknown",
                choice="callback_data",
                text="title",
                message_type="list_reply",
                message_id="wamid.zyzxyz",
            ),
        ),
        ("button.foreign_payload",),
    ),
    CorpusCase(
        "interactive without body and value errors 131000 is kept with two problems",
        "webhook_inbound_interactive_value_errors_131000__pywa.json",
        (reply(intent="unknown", message_type="interactive"),),
        ("webhook.error", "message.unsupported_type"),
    ),
    CorpusCase(
        "template quick reply whose payload is the label unsubscribe means stop",
        "webhook_inbound_template_quick_reply_button__metadocs.json",
        (reply(intent="stop", message_type="button", choice="Unsubscribe"),),
        ("button.foreign_payload",),
    ),
    CorpusCase(
        "template quick reply keeps payload label and context",
        "webhook_inbound_template_quick_reply_button__pywa.json",
        (
            reply(
                intent="unknown",
                choice="callback_data",
                text="title",
                context_id="wamid.xyzxyz==",
                message_type="button",
            ),
        ),
        ("button.foreign_payload",),
    ),
    CorpusCase(
        "template quick reply without context has no context id",
        "webhook_inbound_template_quick_reply_no_context_bsuid__pywa.json",
        (reply(context_id=None, channel_user="+972987654321", message_type="button"),),
        ("button.foreign_payload",),
    ),
    CorpusCase(
        "inbound text is a reply with its text",
        "webhook_inbound_text__pywa.json",
        (reply(intent="unknown", text="Body Text", message_type="text", context_id=None),),
    ),
    CorpusCase(
        "text quoting our message carries the context id",
        "webhook_inbound_text_reply_with_context__pywa.json",
        (reply(text="replied text", context_id="wamid.xyzxyz=="),),
    ),
    CorpusCase(
        "unsupported type is kept with its 131051 error as problems",
        "webhook_inbound_unsupported__pywa.json",
        (reply(intent="unknown", message_type="unsupported"),),
        ("message.error", "message.unsupported_type"),
    ),
    CorpusCase(
        "delivered status",
        "webhook_status_delivered__pywa.json",
        (status(status="delivered", message_id="wamid.xyzxyz", error_code=None),),
    ),
    CorpusCase(
        "failed status carries 130472",
        "webhook_status_failed_130472__pywa.json",
        (status(status="failed", error_code=130472, recipient="+972987654321"),),
    ),
    CorpusCase(
        "failed status carries 131049",
        "webhook_status_failed_131049__metadocs.json",
        (status(status="failed", error_code=131049),),
    ),
    CorpusCase(
        "read status",
        "webhook_status_read__pywa.json",
        (status(status="read", callback=None),),
    ),
    CorpusCase(
        "sent status with pricing",
        "webhook_status_sent__pywa.json",
        (status(status="sent", error_code=None),),
    ),
    CorpusCase(
        "sent status echoes the callback data",
        "webhook_status_sent_biz_opaque_callback_data__pywa.json",
        (status(status="sent", callback="some data"),),
    ),
    CorpusCase(
        "sent status under per message pricing",
        "webhook_status_sent_pmp_marketing__metadocs.json",
        (status(status="sent", recipient="+16505551234"),),
    ),
    CorpusCase(
        "user changed number becomes a system reply naming the new number",
        "webhook_system_user_changed_number__pywa.json",
        (
            reply(
                message_type="system",
                intent="unknown",
                channel_user="+972987654321",
                choice="+972912345678",
            ),
        ),
        ("system.user_changed_number",),
    ),
    CorpusCase(
        "template category update",
        "webhook_template_category_update__pywa.json",
        (
            template(
                name="my_message_template",
                language="he",
                status="CATEGORY_CHANGED",
                reason="MARKETING",
            ),
        ),
    ),
    CorpusCase(
        "template approved",
        "webhook_template_status_approved__pywa.json",
        (template(name="order_confirmation", language="en_US", status="APPROVED", reason=None),),
    ),
    CorpusCase(
        "template rejected with reason",
        "webhook_template_status_rejected__pywa.json",
        (template(name="abandoned_cart", status="REJECTED", reason="INVALID_FORMAT"),),
    ),
    CorpusCase(
        "value level 130429 is a problem and no event",
        "webhook_value_errors_130429__metadocs.json",
        (),
        ("webhook.error",),
    ),
]


class TestCorpus:
    def test_every_corpus_webhook_has_a_case(self):
        files = {p.name for p in CORPUS.glob("webhook_*.json")}
        assert files == {case.file for case in CORPUS_CASES}

    @pytest.mark.parametrize("case", CORPUS_CASES, ids=lambda c: c.label)
    def test_corpus_body_gives_the_expected_events(self, case: CorpusCase) -> None:
        translation = inspect((CORPUS / case.file).read_bytes())

        assert not translation.fatal
        got = [e.marshal() for e in translation.events]
        assert [e["type"] for e in got] == [x.type for x in case.events]
        for event, expected in zip(got, case.events, strict=True):
            for key, value in expected.fields.items():
                assert event[key] == value, key
        assert [p.code for p in translation.problems] == list(case.problems)

    @pytest.mark.parametrize("case", CORPUS_CASES, ids=lambda c: c.label)
    def test_parse_is_a_pure_function_of_the_bytes(self, case: CorpusCase) -> None:
        body = (CORPUS / case.file).read_bytes()

        first = parse_webhook_body(body, received_at=RECEIVED)
        second = parse_webhook_body(body, received_at=RECEIVED)

        assert first == second
        assert first.message_id == hashlib.sha256(body).hexdigest()

    def test_events_survive_marshal_and_unmarshal(self):
        from bridge.domain import Event

        for path in sorted(CORPUS.glob("webhook_*.json")):
            for event in inspect(path.read_bytes()).events:
                assert Event.unmarshal(event.marshal()) == event

    def test_inspect_output_is_json_serialisable(self):
        body = (CORPUS / "webhook_status_read__pywa.json").read_bytes()
        out = json.loads(json.dumps(inspect(body).marshal()))
        assert out["events"][0]["type"] == "status.updated"
        assert out["problems"] == []


def envelope(*changes: dict[str, Any], entries: int = 1) -> bytes:
    entry = [{"id": f"10234567890123{i}", "changes": list(changes)} for i in range(entries)]
    return json.dumps({"object": "whatsapp_business_account", "entry": entry}).encode()


def messages_change(**value: object) -> dict[str, Any]:
    base: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550100001", "phone_number_id": "109876543210987"},
    }
    base.update(value)
    return {"field": "messages", "value": base}


def text_message(wamid: str, body: str, **extra: object) -> dict[str, Any]:
    message: dict[str, Any] = {
        "from": "573001230001",
        "id": wamid,
        "timestamp": "1767225600",
        "type": "text",
        "text": {"body": body},
    }
    message.update(extra)
    return message


def parse(body: bytes) -> Translation:
    return parse_webhook_body(body, received_at=RECEIVED)


class TestMessages:
    def test_our_button_payload_gives_intent_and_token(self):
        body = envelope(
            messages_change(
                messages=[
                    {
                        "from": "573001230001",
                        "id": "wamid.b1",
                        "timestamp": "1767225600",
                        "type": "button",
                        "button": {"payload": "confirm.k3Jx9-_a", "text": "Confirmar"},
                        "context": {"from": "15550100001", "id": "wamid.ours"},
                    }
                ]
            )
        )

        translation = parse(body)

        (event,) = translation.events
        assert isinstance(event, ReplyReceived)
        assert (event.intent, event.token, event.context_id) == (
            "confirm",
            "k3Jx9-_a",
            "wamid.ours",
        )
        assert event.channel_user == "+573001230001"
        assert translation.problems == ()

    def test_list_row_slot_payload_gives_slot_intent(self):
        body = envelope(
            messages_change(
                messages=[
                    {
                        "from": "573001230001",
                        "id": "wamid.l1",
                        "timestamp": "1767225600",
                        "type": "interactive",
                        "interactive": {
                            "type": "list_reply",
                            "list_reply": {"id": "slot.AbC123", "title": "Mon 10:00"},
                        },
                    }
                ]
            )
        )

        (event,) = parse(body).events
        assert isinstance(event, ReplyReceived)
        assert (event.intent, event.token, event.message_type) == ("slot", "AbC123", "list_reply")

    def test_text_reply_is_classified(self):
        body = envelope(messages_change(messages=[text_message("wamid.t1", "No puedo ir")]))
        (event,) = parse(body).events
        assert isinstance(event, ReplyReceived)
        assert event.intent == "cancel"

    def test_several_entries_changes_messages_and_statuses_all_come_out(self):
        change = messages_change(
            messages=[text_message("wamid.m1", "sí"), text_message("wamid.m2", "STOP")],
            statuses=[
                {
                    "id": "wamid.o1",
                    "status": "sent",
                    "timestamp": "1767225601",
                    "recipient_id": "573001230002",
                    "biz_opaque_callback_data": "41",
                },
                {
                    "id": "wamid.o1",
                    "status": "read",
                    "timestamp": "1767225602",
                    "recipient_id": "573001230002",
                    "biz_opaque_callback_data": "41",
                },
            ],
        )
        body = envelope(change, change, entries=2)

        translation = parse(body)

        kinds = [type(e).__name__ for e in translation.events]
        assert kinds.count("ReplyReceived") == 8
        assert kinds.count("StatusUpdated") == 8
        assert len({e.event_id for e in translation.events}) == 16
        intents = [e.intent for e in translation.events if isinstance(e, ReplyReceived)]
        assert intents[:2] == ["confirm", "stop"]

    def test_same_wamid_twice_in_one_body_gives_two_events_with_distinct_ids(self):
        body = envelope(
            messages_change(messages=[text_message("wamid.d", "ok"), text_message("wamid.d", "ok")])
        )
        events = parse(body).events
        assert [e.source.message_id for e in events] == ["wamid.d", "wamid.d"]
        assert events[0].event_id != events[1].event_id

    def test_message_without_from_uses_from_user_id(self):
        message = text_message("wamid.u1", "hola")
        del message["from"]
        message["from_user_id"] = "CO.1234567890"
        (event,) = parse(envelope(messages_change(messages=[message]))).events
        assert isinstance(event, ReplyReceived)
        assert event.channel_user == "CO.1234567890"

    def test_message_without_from_falls_back_to_the_single_contact_user_id(self):
        message = text_message("wamid.u2", "hola")
        del message["from"]
        change = messages_change(
            contacts=[{"profile": {"name": "X"}, "user_id": "CO.99887766"}], messages=[message]
        )
        (event,) = parse(envelope(change)).events
        assert isinstance(event, ReplyReceived)
        assert event.channel_user == "CO.99887766"

    def test_message_with_no_identity_is_skipped_with_a_problem(self):
        message = text_message("wamid.u3", "hola")
        del message["from"]
        translation = parse(envelope(messages_change(messages=[message])))
        assert translation.events == ()
        assert [p.code for p in translation.problems] == ["message.no_sender"]

    def test_group_message_is_ignored_with_a_problem(self):
        message = text_message("wamid.g1", "hola", group_id="120363000000000000")
        translation = parse(envelope(messages_change(messages=[message])))
        assert translation.events == ()
        assert [p.code for p in translation.problems] == ["message.group_ignored"]

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("1767225600", datetime(2026, 1, 1, tzinfo=UTC)),
            (1767225600, datetime(2026, 1, 1, tzinfo=UTC)),
            ("1767225600000", datetime(2026, 1, 1, tzinfo=UTC)),
        ],
        ids=["seconds as text", "seconds as number", "milliseconds"],
    )
    def test_timestamps_in_seconds_or_milliseconds(self, raw, expected):
        body = envelope(messages_change(messages=[text_message("wamid.ts", "ok", timestamp=raw)]))
        (event,) = parse(body).events
        assert event.occurred_at == expected

    def test_malformed_timestamp_falls_back_to_received_time_with_a_problem(self):
        body = envelope(messages_change(messages=[text_message("wamid.ts", "ok", timestamp="x")]))
        translation = parse(body)
        assert translation.events[0].occurred_at == RECEIVED
        assert [p.code for p in translation.problems] == ["timestamp.invalid"]

    def test_garbage_items_never_crash_and_good_neighbours_survive(self):
        change = messages_change(
            messages=[None, 5, {"type": "text"}, text_message("wamid.ok", "si")],
            statuses=["x", {"id": "wamid.s"}],
        )
        translation = parse(envelope(change, {"field": "messages"}, "junk"))  # type: ignore[arg-type]
        assert [e.source.message_id for e in translation.events] == ["wamid.ok"]
        assert not translation.fatal
        assert len(translation.problems) >= 5


class TestStatuses:
    def status_body(self, value: str, **extra: object) -> bytes:
        item: dict[str, Any] = {
            "id": "wamid.o1",
            "status": value,
            "timestamp": "1767225600",
            "recipient_id": "573001230002",
        }
        item.update(extra)
        return envelope(messages_change(statuses=[item]))

    def test_unknown_status_is_a_no_op_with_a_problem(self):
        translation = parse(self.status_body("deleted"))
        assert translation.events == ()
        assert [p.code for p in translation.problems] == ["status.unknown"]

    def test_status_with_only_a_bsuid_uses_it_as_recipient(self):
        body = self.status_body("delivered", recipient_user_id="CO.555")
        body = body.replace(b'"recipient_id": "573001230002", ', b"")
        (event,) = parse(body).events
        assert isinstance(event, StatusUpdated)
        assert event.recipient == "CO.555"

    def test_failed_status_takes_the_first_error_code(self):
        body = self.status_body("failed", errors=[{"code": "131026", "title": "x"}, {"code": 1}])
        (event,) = parse(body).events
        assert isinstance(event, StatusUpdated)
        assert event.error_code == 131026


class TestTemplateFields:
    def test_paused_template_uses_the_pause_title_as_reason(self):
        body = json.dumps(
            {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "1",
                        "time": 1767225600,
                        "changes": [
                            {
                                "field": "message_template_status_update",
                                "value": {
                                    "event": "PAUSED",
                                    "message_template_id": 7,
                                    "message_template_name": "appointment_reminder",
                                    "message_template_language": "es",
                                    "reason": "NONE",
                                    "other_info": {"title": "FIRST_PAUSE", "description": "x"},
                                },
                            }
                        ],
                    }
                ],
            }
        ).encode()
        (event,) = parse(body).events
        assert isinstance(event, TemplateStatusChanged)
        assert (event.name, event.status, event.reason) == (
            "appointment_reminder",
            "PAUSED",
            "FIRST_PAUSE",
        )

    def test_unused_field_is_a_non_fatal_problem(self):
        body = envelope({"field": "account_alerts", "value": {"x": 1}})
        translation = parse(body)
        assert translation.events == ()
        assert [p.code for p in translation.problems] == ["change.ignored"]


class TestBadBodies:
    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (b"not json", "webhook.not_json"),
            (b"\xff\xfe", "webhook.not_json"),
            (b"[]", "webhook.not_whatsapp"),
            (b'{"object": "page", "entry": []}', "webhook.not_whatsapp"),
            (b'{"object": "whatsapp_business_account"}', "webhook.no_entries"),
        ],
        ids=["text", "binary", "json list", "messenger object", "no entry"],
    )
    def test_body_that_is_not_a_webhook_is_one_fatal_problem(self, body, code):
        translation = parse(body)
        assert translation.fatal
        assert translation.events == ()
        assert [p.code for p in translation.problems] == [code]

    def test_sender_is_the_first_phone_number_id(self):
        body = (CORPUS / "webhook_status_read__pywa.json").read_bytes()
        assert first_phone_number_id(body) == "1122334455667"
        assert first_phone_number_id(b"nope") is None
        assert first_phone_number_id(envelope({"field": "x", "value": {}})) is None


class TestSignature:
    BODY = json.dumps(
        {"object": "whatsapp_business_account", "entry": [{"text": "José canceló / @ ñ"}]},
        ensure_ascii=True,
    ).encode()

    def test_good_signature_passes(self):
        assert verify_signature(SECRET, self.BODY, sign(self.BODY))

    def test_uppercase_hex_passes(self):
        header = sign(self.BODY)
        assert verify_signature(SECRET, self.BODY, "sha256=" + header[7:].upper())

    @pytest.mark.parametrize(
        "header",
        [None, "", "sha256=", "sha1=abc", "sha256=deadbeef", "sha256=ñoño", "garbage"],
        ids=["missing", "empty", "no hex", "wrong scheme", "wrong hex", "non ascii", "garbage"],
    )
    def test_bad_or_missing_signature_fails(self, header):
        assert not verify_signature(SECRET, self.BODY, header)

    def test_wrong_secret_fails(self):
        assert not verify_signature(b"other", self.BODY, sign(self.BODY))

    def test_reserialised_json_with_accents_fails(self):
        """Meta signs \\uXXXX escapes; re-encoding as UTF-8 changes the bytes and the HMAC."""
        header = sign(self.BODY)
        reserialised = json.dumps(json.loads(self.BODY), ensure_ascii=False).encode()

        assert reserialised != self.BODY
        assert not verify_signature(SECRET, reserialised, header)
