"""FHIR translation: every public corpus file through ``inspect``, plus synthetic unhappy cases."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bridge.domain import AppointmentInfo, Translation
from connectors.fhir import inspect
from connectors.fhir._translate import TranslateContext, translate_payload

CORPUS = Path("/work/shared/corpus/fhir")
if not CORPUS.is_dir():  # CI clones main with shared/ beside it
    CORPUS = Path(__file__).resolve().parents[4] / "shared" / "corpus" / "fhir"
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@dataclass(frozen=True)
class CorpusCase:
    file: str
    events: list[tuple[str, str]] = field(
        default_factory=list
    )  # (type, appointment/result/patient id)
    codes: set[str] = field(default_factory=set)  # problem codes that must be present
    fatal: bool = False

    @property
    def label(self) -> str:
        return self.file.removesuffix(".json")


IGNORED = "resource.ignored"
CORPUS_CASES = [
    CorpusCase("AppointmentResponse__example-accepted__hl7fhir-r4.json", codes={IGNORED}),
    CorpusCase("AppointmentResponse__example-tentative__hl7fhir-r4.json", codes={IGNORED}),
    CorpusCase(
        "Appointment__example-basic__hl7fhir-r4.json",
        events=[("appointment.booked", "example")],
        codes={"patient.not_included"},
    ),
    CorpusCase(
        "Appointment__example-basic__hl7fhir-r5.json", codes={"resource.invalid"}, fatal=True
    ),
    CorpusCase(
        "Appointment__example-request-proposed__hl7fhir-r4.json",
        events=[("appointment.updated", "examplereq")],
        codes={"patient.not_included"},
    ),
    CorpusCase(
        "Appointment__example-request-proposed__hl7fhir-r5.json",
        codes={"resource.invalid"},
        fatal=True,
    ),
    CorpusCase("Basic__r4-topic-encounter-complete__backport-ig.json", codes={IGNORED}),
    CorpusCase(
        "Bundle__f001-bloodexam-collection__hl7fhir-r4.json",
        events=[("result.available", "f001")],
        codes={"patient.not_included", IGNORED},
    ),
    CorpusCase(
        "Bundle__lipids-lab-collection__hl7fhir-r4.json",
        events=[("result.available", "lipids")],
        codes={"patient.not_included", IGNORED},
    ),
    CorpusCase("Bundle__r4-notification-empty__backport-ig.json", codes={"notification.empty"}),
    CorpusCase(
        "Bundle__r4-notification-error__backport-ig.json",
        codes={"notification.status", "notification.error"},
    ),
    CorpusCase(
        "Bundle__r4-notification-full-resource-with-query__backport-ig.json", codes={IGNORED}
    ),
    CorpusCase("Bundle__r4-notification-full-resource__backport-ig.json", codes={IGNORED}),
    CorpusCase(
        "Bundle__r4-notification-handshake__backport-ig.json", codes={"notification.handshake"}
    ),
    CorpusCase(
        "Bundle__r4-notification-heartbeat__backport-ig.json", codes={"notification.heartbeat"}
    ),
    CorpusCase(
        "Bundle__r4-notification-id-only-with-auth__backport-ig.json", codes={"notification.fetch"}
    ),
    CorpusCase("Bundle__r4-notification-id-only__backport-ig.json", codes={"notification.fetch"}),
    CorpusCase("Bundle__searchset-example__hl7fhir-r4.json", codes={IGNORED}),
    CorpusCase("Bundle__searchset-warning__hl7fhir-r4.json", codes={"bundle.outcome"}),
    CorpusCase(
        "Bundle__transaction-response__hl7fhir-r4.json",
        events=[("patient.updated", "12423")],
        codes={"phone.missing"},
    ),
    CorpusCase(
        "CapabilityStatement__backport-subscription-server-r4__backport-ig.json", codes={IGNORED}
    ),
    CorpusCase("CommunicationRequest__example__hl7fhir-r4.json", codes={IGNORED}),
    CorpusCase("Communication__example__hl7fhir-r4.json", codes={IGNORED}),
    CorpusCase("Consent__basic__hl7fhir-r4.json", codes={IGNORED}),
    CorpusCase("Consent__deny-org__hl7fhir-r4.json", codes={IGNORED}),
    *[
        CorpusCase(
            f"DiagnosticReport__{name}__hl7fhir-r4.json",
            events=[("result.available", rid)],
            codes={"patient.not_included"},
        )
        for name, rid in [
            ("102", "102"),
            ("f001-lab", "f001"),
            ("f201-ct", "f201"),
            ("ghp-lab", "ghp"),
            ("lipids-lab", "lipids"),
        ]
    ],
    CorpusCase(
        "Parameters__r4-subscription-status__backport-ig.json", codes={"notification.status"}
    ),
    CorpusCase("Patient__f001-mobile-nl__hl7fhir-r4.json", events=[("patient.updated", "f001")]),
    CorpusCase("Patient__f201-mobile-nl-NL__hl7fhir-r4.json", events=[("patient.updated", "f201")]),
    CorpusCase(
        "Patient__pat1__hl7fhir-r4.json",
        events=[("patient.updated", "pat1")],
        codes={"phone.missing"},
    ),
    *[
        CorpusCase(name, codes={IGNORED})
        for name in [
            "Schedule__example__hl7fhir-r4.json",
            "Schedule__exampleloc1__hl7fhir-r4.json",
            "Schedule__exampleloc2__hl7fhir-r4.json",
            "Slot__1-busy__hl7fhir-r4.json",
            "Slot__2-busy-tentative__hl7fhir-r4.json",
            "Slot__3-busy-unavailable__hl7fhir-r4.json",
            "Slot__example-free__hl7fhir-r4.json",
            "SubscriptionTopic__admission__hl7fhir-r5.json",
            "SubscriptionTopic__r4b-encounter-complete__backport-ig.json",
            "Subscription__backport-admission-id-only__backport-ig.json",
            "Subscription__backport-multi-resource-full__backport-ig.json",
            "Subscription__backport-zulip-custom-channel__backport-ig.json",
            "Subscription__example-classic-criteria__hl7fhir-r4.json",
            "Subscription__example-error__hl7fhir-r4.json",
            "Task__example1__hl7fhir-r4.json",
            "Task__example3__hl7fhir-r4.json",
        ]
    ],
]


def _subject_id(event: dict[str, Any]) -> str:
    for key in ("appointment", "result", "patient"):
        if event.get(key):
            return str(event[key]["id"])
    raise AssertionError("event without subject")


class TestCorpus:
    def test_every_corpus_file_has_a_case(self) -> None:
        on_disk = {p.name for p in CORPUS.glob("*") if p.name != "SOURCES.md"}
        assert on_disk == {c.file for c in CORPUS_CASES}

    @pytest.mark.parametrize("case", CORPUS_CASES, ids=lambda c: c.label)
    def test_corpus_file_gives_expected_events_and_problems(self, case: CorpusCase) -> None:
        translation = inspect((CORPUS / case.file).read_bytes(), region="NL")
        out = json.loads(json.dumps(translation.marshal()))  # the --json object is JSON-able
        assert [(e["type"], _subject_id(e)) for e in out["events"]] == case.events
        assert case.codes <= {p["code"] for p in out["problems"]}
        assert translation.fatal is case.fatal

    @pytest.mark.parametrize(
        "name",
        [c.file for c in CORPUS_CASES if c.file.startswith(("DiagnosticReport", "Bundle__lipids"))],
    )
    def test_result_events_carry_no_code_conclusion_or_values(self, name: str) -> None:
        raw = json.loads((CORPUS / name).read_bytes())
        report = raw if raw["resourceType"] == "DiagnosticReport" else raw["entry"][0]["resource"]
        dumped = json.dumps(inspect((CORPUS / name).read_bytes()).marshal())
        assert set(json.loads(dumped)["events"][0]["result"]) == {
            "id",
            "status",
            "system",
            "issued",
        }
        secrets = [c.get("code") for c in report["code"].get("coding", [])]
        secrets += [report.get("conclusion")] if report.get("conclusion") else []
        for secret in filter(None, secrets):
            assert str(secret) not in dumped

    def test_mobile_number_is_read_as_e164_with_the_default_region(self) -> None:
        out = inspect(
            (CORPUS / "Patient__f001-mobile-nl__hl7fhir-r4.json").read_bytes(), region="NL"
        )
        patient = out.events[0].marshal()["patient"]
        assert (patient["phone"], patient["language"]) == ("+31648352638", "nl")

    def test_national_number_without_region_gives_a_phone_problem(self) -> None:
        out = inspect((CORPUS / "Patient__f001-mobile-nl__hl7fhir-r4.json").read_bytes())
        assert out.events[0].marshal()["patient"]["phone"] is None
        assert "phone.invalid" in {p.code for p in out.problems}

    def test_problems_never_carry_patient_names_or_numbers(self) -> None:
        for case in CORPUS_CASES:
            raw = (CORPUS / case.file).read_text()
            problems = json.dumps([p.marshal() for p in inspect(raw.encode()).problems])
            for needle in ("Chalmers", "Heuvel", "0648352638", "+31612345678", "Roel"):
                assert needle not in problems, case.file


# ------------------------------------------------------------------ synthetic cases


def _patient(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"use": "official", "given": ["Testname"]}],
        "telecom": [
            {"system": "phone", "value": "+441632960001", "use": "work", "rank": 1},
            {"system": "phone", "value": "+573001230001", "use": "mobile", "rank": 2},
            {"system": "phone", "value": "+573001230002", "use": "old"},
        ],
        "communication": [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}},
            {
                "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es-CO"}]},
                "preferred": True,
            },
        ],
        **extra,
    }


def _appointment(
    status: str = "booked", start: str = "2026-12-01T09:00:00-05:00", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": "a1",
        "meta": {"versionId": "3", "lastUpdated": "2026-11-20T10:00:00Z"},
        "status": status,
        "start": start,
        "end": "2026-12-01T09:30:00-05:00",
        "serviceType": [{"text": "Cardiology"}],
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "needs-action"},
            {
                "actor": {"reference": "Practitioner/d1", "display": "Dr Example"},
                "status": "accepted",
            },
            {"actor": {"reference": "Location/l1", "display": "Room 4"}, "status": "accepted"},
        ],
        **extra,
    }


def _bundle(*resources: dict[str, Any], kind: str = "collection") -> bytes:
    entries = [
        {"fullUrl": f"http://ehr.test/fhir/{r['resourceType']}/{r['id']}", "resource": r}
        for r in resources
    ]
    return json.dumps(
        {"resourceType": "Bundle", "id": "b1", "type": kind, "entry": entries}
    ).encode()


def _ctx(**kw: Any) -> TranslateContext:
    return TranslateContext(now=NOW, system="http://ehr.test/fhir", region="CO", **kw)


def _translate(payload: bytes | dict[str, Any], **kw: Any) -> Translation:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return translate_payload(raw, _ctx(**kw))


def _info(
    status: str = "booked", start: str = "2026-12-01T09:00:00-05:00", version: str = "2"
) -> AppointmentInfo:
    return AppointmentInfo(
        id="a1",
        status=status,
        start=datetime.fromisoformat(start),
        end=datetime.fromisoformat("2026-12-01T09:30:00-05:00"),
        system="http://ehr.test/fhir",
        version=version,
    )


class TestAppointment:
    def test_appointment_with_its_patient_in_a_bundle_gives_a_full_event(self) -> None:
        out = _translate(_bundle(_appointment(), _patient()))
        event = out.events[0].marshal()
        assert event["type"] == "appointment.booked"
        assert event["source"] == {"connector": "fhir", "message_id": "Appointment/a1/_history/3"}
        assert event["appointment"] | {} == {
            "id": "a1",
            "status": "booked",
            "start": "2026-12-01T09:00:00-05:00",
            "end": "2026-12-01T09:30:00-05:00",
            "system": "http://ehr.test/fhir",
            "version": "3",
            "location": "Room 4",
            "practitioner": "Dr Example",
            "service": "Cardiology",
            "schedule_id": None,
        }
        assert (
            event["patient"]["phone"] == "+573001230001"
        )  # mobile before a better-ranked work phone
        assert event["patient"]["language"] == "es"  # the preferred language wins
        assert event["patient"]["given_name"] == "Testname"
        assert [e.type for e in out.events] == ["appointment.booked", "patient.updated"]

    @dataclass(frozen=True)
    class TransitionCase:
        label: str
        status: str
        previous: AppointmentInfo | None
        expected: str
        start: str = "2026-12-01T09:00:00-05:00"

    TRANSITIONS = [
        TransitionCase("new booked", "booked", None, "appointment.booked"),
        TransitionCase("new proposed", "proposed", None, "appointment.updated"),
        TransitionCase("pending becomes booked", "booked", _info("pending"), "appointment.booked"),
        TransitionCase(
            "start moved",
            "booked",
            _info(),
            "appointment.rescheduled",
            start="2026-12-02T09:00:00-05:00",
        ),
        TransitionCase("comment changed", "booked", _info(), "appointment.updated"),
        TransitionCase("cancelled", "cancelled", _info(), "appointment.cancelled"),
        TransitionCase("cancelled again", "cancelled", _info("cancelled"), "appointment.updated"),
        TransitionCase("no-show", "noshow", _info(), "appointment.noshow"),
        TransitionCase("entered in error", "entered-in-error", _info(), "appointment.deleted"),
        TransitionCase(
            "cancelled and moved",
            "cancelled",
            _info(),
            "appointment.cancelled",
            start="2026-12-05T09:00:00Z",
        ),
    ]

    @pytest.mark.parametrize("case", TRANSITIONS, ids=lambda c: c.label)
    def test_previous_version_decides_the_event_type(self, case: TransitionCase) -> None:
        out = _translate(_appointment(case.status, case.start), previous=lambda _id: case.previous)
        assert [e.type for e in out.events] == [case.expected]

    def test_time_without_offset_takes_the_configured_zone(self) -> None:
        out = _translate(_appointment(start="2026-12-01T09:00:00"), tz=ZoneInfo("America/Bogota"))
        start = out.events[0].marshal()["appointment"]["start"]
        assert start == "2026-12-01T09:00:00-05:00"

    def test_time_without_offset_and_no_zone_is_a_problem_not_a_guess(self) -> None:
        # the R4B model rejects an instant without offset, so the resource is invalid
        out = _translate(_appointment(start="2026-12-01T09:00:00"))
        assert out.events == ()
        assert {p.code for p in out.problems} == {"resource.invalid"}

    def test_unknown_status_is_fatal(self) -> None:
        out = _translate(_appointment(status="confirmed"))
        assert out.fatal and out.problems[0].code == "appointment.status_unknown"

    def test_appointment_without_patient_gives_no_event(self) -> None:
        appt = _appointment()
        appt["participant"] = appt["participant"][1:]
        out = _translate(appt)
        assert out.events == () and "appointment.no_patient" in {p.code for p in out.problems}

    def test_broken_urn_reference_is_a_problem(self) -> None:
        appt = _appointment()
        appt["participant"][0]["actor"]["reference"] = (
            "urn:uuid:0d4c5c1e-0000-4000-8000-000000000000"
        )
        out = _translate(_bundle(appt))
        assert "reference.broken" in {p.code for p in out.problems}
        assert not out.fatal

    def test_contained_patient_is_used(self) -> None:
        patient = _patient()
        appt = _appointment(contained=[{**patient, "id": "pc"}])
        appt["participant"][0]["actor"]["reference"] = "#pc"
        out = _translate(appt)
        assert out.events[0].marshal()["patient"]["phone"] == "+573001230001"


class TestPatient:
    def test_expired_and_old_numbers_are_skipped(self) -> None:
        patient = _patient(
            telecom=[
                {
                    "system": "phone",
                    "value": "+573001230003",
                    "use": "mobile",
                    "period": {"end": "2020-01-01T00:00:00Z"},
                },
                {"system": "phone", "value": "+573001230002", "use": "old"},
                {"system": "sms", "value": "300 123 0004", "rank": 3},
            ]
        )
        out = _translate(patient)
        assert out.events[0].marshal()["patient"]["phone"] == "+573001230004"

    def test_invalid_number_gives_phone_invalid_without_the_number(self) -> None:
        out = _translate(_patient(telecom=[{"system": "phone", "value": "+5712", "use": "mobile"}]))
        problem = next(p for p in out.problems if p.code == "phone.invalid")
        assert "+5712" not in problem.message

    def test_language_without_two_letter_code_is_a_problem(self) -> None:
        comm = [{"language": {"coding": [{"code": "spa"}]}}]
        out = _translate(_patient(communication=comm))
        assert out.events[0].marshal()["patient"]["language"] is None
        assert "language.unknown" in {p.code for p in out.problems}


class TestReport:
    @pytest.mark.parametrize(
        ("status", "events", "code"),
        [
            ("final", ["result.available"], None),
            ("amended", ["result.available"], None),
            ("corrected", ["result.available"], None),
            ("preliminary", [], "result.not_final"),
            ("entered-in-error", [], "result.not_final"),
            ("bogus", [], "result.status_unknown"),
        ],
    )
    def test_report_status_decides_whether_patients_hear(
        self, status: str, events: list[str], code: str | None
    ) -> None:
        report = {
            "resourceType": "DiagnosticReport",
            "id": "r1",
            "status": status,
            "code": {"text": "Secret test name"},
            "conclusion": "Secret conclusion",
            "subject": {"reference": "Patient/p1"},
        }
        out = _translate(_bundle(report, _patient()))
        assert [e.type for e in out.events if e.type != "patient.updated"] == events
        if code:
            assert code in {p.code for p in out.problems}
        assert "Secret" not in json.dumps(out.marshal())


class TestUnhappy:
    @pytest.mark.parametrize(
        ("payload", "code"),
        [
            (b"\x00\xffnot json", "payload.not_json"),
            (b"[1, 2]", "payload.not_resource"),
            (b'{"resourceType": "Foo", "id": "x"}', "resource.unknown_type"),
            (
                b'{"resourceType": "Appointment", "id": "x", "status": "booked", "bogus": 1}',
                "resource.invalid",
            ),
            (b'{"resourceType": "Bundle", "id": "b"}', "bundle.invalid"),
        ],
    )
    def test_unusable_payload_is_one_fatal_problem(self, payload: bytes, code: str) -> None:
        out = inspect(payload)
        assert out.fatal and [p.code for p in out.problems] == [code]

    def test_invalid_entry_does_not_sink_the_rest_of_the_bundle(self) -> None:
        bad = {"resourceType": "Appointment", "id": "bad", "status": "booked", "wrong": True}
        out = _translate(_bundle(bad, _appointment(), _patient()))
        assert "appointment.booked" in [e.type for e in out.events]
        assert not out.fatal and "resource.invalid" in {p.code for p in out.problems}

    def test_unknown_inspect_zone_is_reported(self) -> None:
        out = inspect(json.dumps(_patient()).encode(), tz="Mars/Olympus")
        assert "tz.unknown" in {p.code for p in out.problems}


def _notification(
    kind: str,
    *,
    topic: str = "http://ehr.test/topic/appt",
    focus: tuple[str, ...] = (),
    resources: tuple[dict[str, Any], ...] = (),
    number: int = 1,
) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {
            "name": "subscription",
            "valueReference": {"reference": "http://ehr.test/fhir/Subscription/s1"},
        },
        {"name": "topic", "valueCanonical": topic},
        {"name": "status", "valueCode": "active"},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(number)},
    ]
    if kind == "event-notification":
        parts: list[dict[str, Any]] = [{"name": "event-number", "valueString": str(number)}]
        parts += [{"name": "focus", "valueReference": {"reference": f}} for f in focus]
        params.append({"name": "notification-event", "part": parts})
    entries = [
        {
            "fullUrl": "urn:uuid:5f0c8f6e-1111-4111-8111-111111111111",
            "resource": {"resourceType": "Parameters", "parameter": params},
        }
    ]
    entries += [
        {"fullUrl": f"http://ehr.test/fhir/{r['resourceType']}/{r['id']}", "resource": r}
        for r in resources
    ]
    return {"resourceType": "Bundle", "id": "n1", "type": "history", "entry": entries}


class TestNotification:
    def test_full_resource_notification_gives_events(self) -> None:
        note = _notification(
            "event-notification",
            focus=("http://ehr.test/fhir/Appointment/a1",),
            resources=(_appointment(), _patient()),
        )
        out = _translate(note)
        assert [e.type for e in out.events] == ["appointment.booked", "patient.updated"]
        assert "notification.fetch" not in {p.code for p in out.problems}

    def test_id_only_notification_says_what_would_be_fetched(self) -> None:
        out = _translate(
            _notification("event-notification", focus=("http://ehr.test/fhir/Appointment/a1",))
        )
        fetch = [p for p in out.problems if p.code == "notification.fetch"]
        assert len(fetch) == 1 and "Appointment/a1" in fetch[0].message

    def test_unknown_topic_is_fatal(self) -> None:
        out = _translate(
            _notification("heartbeat"), known_topics=frozenset({"http://ehr.test/topic/other"})
        )
        assert out.fatal and "notification.unknown_topic" in {p.code for p in out.problems}

    def test_r4b_subscription_status_is_understood(self) -> None:
        status = {
            "resourceType": "SubscriptionStatus",
            "status": "active",
            "type": "event-notification",
            "eventsSinceSubscriptionStart": "4",
            "notificationEvent": [{"eventNumber": "4", "focus": {"reference": "Appointment/a1"}}],
            "subscription": {"reference": "Subscription/s1"},
            "topic": "http://ehr.test/topic/appt",
        }
        bundle = {
            "resourceType": "Bundle",
            "id": "n2",
            "type": "history",
            "entry": [{"resource": status}],
        }
        out = _translate(bundle)
        assert {p.code for p in out.problems} == {"notification.fetch"}

    def test_message_id_of_a_resource_includes_its_version(self) -> None:
        out = _translate(_appointment())
        assert out.message_id == "Appointment/a1/_history/3"

    def test_translation_uses_now_for_expiry(self) -> None:
        later = TranslateContext(now=NOW + timedelta(days=10000), region="CO")
        patient = _patient(
            telecom=[
                {
                    "system": "phone",
                    "value": "+573001230001",
                    "use": "mobile",
                    "period": {"end": "2030-01-01T00:00:00Z"},
                }
            ]
        )
        out = translate_payload(json.dumps(patient).encode(), later)
        assert out.events[0].marshal()["patient"]["phone"] is None
