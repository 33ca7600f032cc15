"""Every file in the shared HL7 corpus through ``inspect``: the ids, types, times and phones a reader expects.

The expectations were written by reading each message: SCH-2.1 (else SCH-1.1) for the
appointment, TQ1-7/8 (else SCH-11.4/.5) for the times, PID-3.1 for the patient, the first
valid cell (else other) number of PID-13/14 for the phone, OBR-3.1 for each final order.
Times without an offset are read in America/New_York, numbers in region US.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.domain import AppointmentEvent, LabResultAvailable, PatientUpdated
from connectors.hl7v2 import inspect
from connectors.hl7v2._segments import normalise, parse_message

CORPUS = Path("/work/shared/corpus/hl7")


@dataclass(frozen=True)
class E:
    """One expected event: type, appointment/result id and status, patient id, phone, times."""

    type: str
    id: str | None
    status: str | None
    patient: str
    phone: str | None
    start: str | None = None
    end: str | None = None


@dataclass(frozen=True)
class Case:
    file: str
    message_id: str | None
    events: tuple[E, ...]
    problems: tuple[str, ...]


def _actual(event: object) -> E:
    data = event.marshal()  # type: ignore[attr-defined]
    appointment = data.get("appointment") or {}
    result = data.get("result") or {}
    patient = data["patient"]
    if appointment:
        return E(
            data["type"],
            appointment["id"],
            appointment["status"],
            patient["id"],
            patient["phone"],
            appointment["start"],
            appointment["end"],
        )
    return E(
        data["type"],
        result.get("id"),
        result.get("status"),
        patient["id"],
        patient["phone"],
    )


CASES = [
    Case("ACK__mieweb_AA_1.hl7", "1407511", (), ("message.unsupported_type",)),
    Case("ACK__mieweb_AE_1.hl7", "1407511", (), ("message.unsupported_type",)),
    Case("ACK__mirth_AA_1.hl7", "HMCDOOGAL-0088", (), ("message.unsupported_type",)),
    Case("ADT_A01__pythonhl7_cerner_1.hl7", "Q150084616T145947960", (), ("event.unsupported",)),
    Case(
        "ADT_A04__fhirconverter_1.hl7",
        "Q123456789T123456789X123456",
        (E("patient.updated", None, None, "123456789", None),),
        ("phone.invalid",),
    ),
    Case(
        "ADT_A04__fhirconverter_2.hl7",
        "1270326314",
        (E("patient.updated", None, None, "MRN12345", None),),
        (),
    ),
    Case(
        "ADT_A04__fhirconverter_3.hl7",
        "1270326314",
        (E("patient.updated", None, None, "0000000001", "+18088675301"),),
        (),
    ),
    Case(
        "ADT_A04__fhirconverter_4.hl7",
        "MSG00001",
        (E("patient.updated", None, None, "PATID1234", None),),
        ("phone.invalid",),
    ),
    Case(
        "ADT_A04__mieweb_inbound_1.hl7",
        "934576120110613083617",
        (E("patient.updated", None, None, "135769", "+14079391289"),),
        (),
    ),
    Case(
        "ADT_A04__mieweb_outbound_1.hl7",
        "DSD1625157299701062",
        (E("patient.updated", None, None, "1059319", None),),
        ("phone.invalid",),
    ),
    Case(
        "ADT_A04__pythonhl7_batch_1.hl7",
        "abchs20070101123401-1",
        (E("patient.updated", None, None, "0000112234", None),),
        (),
    ),
    Case(
        "ADT_A08__fhirconverter_1.hl7",
        "MSG00001",
        (E("patient.updated", None, None, "PATID1234", None),),
        ("phone.invalid",),
    ),
    Case(
        "ADT_A08__fhirconverter_2.hl7",
        "MSG00001",
        (E("patient.updated", None, None, "PATID1234", None),),
        ("phone.invalid",),
    ),
    Case(
        "ADT_A08__mieweb_inbound_1.hl7",
        "934579920110613072049",
        (E("patient.updated", None, None, "135769", "+14079391289"),),
        (),
    ),
    Case(
        "ADT_A08__mieweb_outbound_1.hl7",
        "DSD1625157299704299",
        (E("patient.updated", None, None, "1025209", None),),
        ("phone.invalid",),
    ),
    Case(
        "ADT_A31__fhirconverter_1.hl7",
        "MSG00001",
        (E("patient.updated", None, None, "PATID1234", None),),
        ("phone.invalid",),
    ),
    Case(
        "ORU_R01__fhirconverter_1.hl7",
        "CNTRL-3456",
        (E("result.available", "1045813", "final", "555-44-4444", "+12063345232"),),
        (),
    ),
    Case(
        "ORU_R01__fhirconverter_2.hl7",
        "182",
        (E("result.available", "82503246", "final", "10006579", "+18885551212"),),
        (),
    ),
    Case(
        "ORU_R01__fhirconverter_3.hl7",
        "ControlID",
        (
            E("result.available", "890775544", "final", "10006579", "+18885551212"),
            E("result.available", "82503246", "final", "10006579", "+18885551212"),
        ),
        (),
    ),
    Case(
        "ORU_R01__fhirconverter_4.hl7",
        "2.16.840.1.114222.4.3.3.5.1.2-20120314235954.325",
        (E("result.available", "986", "final", "14", None),),
        (),
    ),
    Case(
        "ORU_R01__mieweb_inbound_1.hl7",
        "59689",
        (E("result.available", "12376", "final", "12345", None),),
        (),
    ),
    Case(
        "ORU_R01__mieweb_outbound_1.hl7",
        "DSD1625832295118172",
        (
            E("result.available", "GROUP320", "final", "5007", None),
            E("result.available", "GROUP400", "final", "5007", None),
            E("result.available", "GROUP600", "final", "5007", None),
            E("result.available", "GROUP601", "final", "5007", None),
            E("result.available", "GROUP999", "final", "5007", None),
        ),
        (),
    ),
    Case(
        "ORU_R01__mieweb_outbound_2.hl7",
        "DSD1624337372374298",
        (E("result.available", "21S-160VI0363", "final", "5007", None),),
        (),
    ),
    Case(
        "SIU_S12__fhirconverter_1.hl7",
        "MSG00012",
        (
            E(
                "appointment.booked",
                "36996",
                "booked",
                "PATID1234",
                None,
                "2021-09-24T09:30:00+02:15",
                "2021-09-24T10:20:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S12__fhirconverter_2.hl7",
        "MSG00012",
        (
            E(
                "appointment.booked",
                "36996",
                "booked",
                "PATID1234",
                None,
                "2021-08-18T11:30:00+02:15",
                "2021-08-18T12:30:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S12__fhirconverter_3.hl7",
        "MSG00001",
        (
            E(
                "appointment.booked",
                "36996",
                "booked",
                "PATID1234",
                None,
                "2020-10-04T11:26:00+02:15",
                "2020-10-08T11:26:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S12__mieweb_inbound_1.hl7",
        "24916560",
        (
            E(
                "appointment.booked",
                "2196178",
                "booked",
                "42",
                "+12605551234",
                "2011-06-17T08:45:00-04:00",
                "2011-06-17T09:30:00-04:00",
            ),
        ),
        (),
    ),
    Case(
        "SIU_S12__mieweb_outbound_1.hl7",
        "DSD1619205057152978",
        (
            E(
                "appointment.booked",
                "2677255",
                "booked",
                "123456",
                None,
                "2021-04-27T08:15:00-04:00",
                "2021-04-27T08:30:00-04:00",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S13__fhirconverter_1.hl7",
        "MSG00013",
        (
            E(
                "appointment.rescheduled",
                "36996",
                "booked",
                "PATID1234",
                None,
                "2021-09-24T09:30:00+02:15",
                "2021-09-24T10:20:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S13__fhirconverter_2.hl7",
        "MSG00013",
        (
            E(
                "appointment.rescheduled",
                "36996",
                "booked",
                "PATID1234",
                None,
                "2021-08-20T11:30:00+02:15",
                "2021-08-20T12:30:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S14__fhirconverter_1.hl7",
        "MSG00014",
        (
            E(
                "appointment.updated",
                "36996",
                "booked",
                "PATID1234",
                None,
                "2021-09-24T09:30:00+02:15",
                "2021-09-24T10:20:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S14__fhirconverter_2.hl7",
        "MSG00014",
        (
            E(
                "appointment.updated",
                "36996",
                "booked",
                "PATID1234",
                None,
                "2021-08-18T11:30:00+02:15",
                "2021-08-18T12:30:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S14__mieweb_inbound_1.hl7",
        "24916579",
        (
            E(
                "appointment.updated",
                "2196178",
                "booked",
                "42",
                "+12605551234",
                "2011-06-17T08:45:00-04:00",
                "2011-06-17T09:30:00-04:00",
            ),
        ),
        (),
    ),
    Case(
        "SIU_S14__mieweb_outbound_1.hl7",
        "DSD1619701225649131",
        (
            E(
                "appointment.updated",
                "2581249",
                "booked",
                "456789",
                None,
                "2021-04-28T16:00:00-04:00",
                "2021-04-28T16:30:00-04:00",
            ),
        ),
        ("phone.invalid", "status.unknown"),
    ),
    Case(
        "SIU_S15__fhirconverter_1.hl7",
        "MSG00015",
        (
            E(
                "appointment.cancelled",
                "36996",
                "cancelled",
                "PATID1234",
                None,
                "2021-09-24T09:30:00+02:15",
                "2021-09-24T10:20:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S15__fhirconverter_2.hl7",
        "MSG00015",
        (
            E(
                "appointment.cancelled",
                "36996",
                "cancelled",
                "PATID1234",
                None,
                "2021-08-18T11:30:00+02:15",
                "2021-08-18T12:30:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S15__mieweb_inbound_1.hl7",
        "24916597",
        (
            E(
                "appointment.cancelled",
                "2196178",
                "cancelled",
                "42",
                "+12605551234",
                "2011-06-17T08:45:00-04:00",
                "2011-06-17T09:30:00-04:00",
            ),
        ),
        (),
    ),
    Case(
        "SIU_S15__mieweb_outbound_1.hl7",
        "DSD1619689841639741",
        (
            E(
                "appointment.cancelled",
                "2677255",
                "cancelled",
                "123456",
                None,
                "2021-04-27T08:15:00-04:00",
                "2021-04-27T08:30:00-04:00",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S16__fhirconverter_1.hl7",
        "MSG00016",
        (
            E(
                "appointment.cancelled",
                "36996",
                "cancelled",
                "PATID1234",
                None,
                "2021-09-24T09:30:00+02:15",
                "2021-09-24T10:20:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S17__fhirconverter_1.hl7",
        "MSG00017",
        (
            E(
                "appointment.deleted",
                "36996",
                "entered-in-error",
                "PATID1234",
                None,
                "2021-09-24T09:30:00+02:15",
                "2021-09-24T10:20:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S17__fhirconverter_2.hl7",
        "MSG00017",
        (
            E(
                "appointment.deleted",
                "36996",
                "entered-in-error",
                "PATID1234",
                None,
                "2021-08-18T11:30:00+02:15",
                "2021-08-18T12:30:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S26__fhirconverter_1.hl7",
        "MSG00026",
        (
            E(
                "appointment.noshow",
                "36996",
                "noshow",
                "PATID1234",
                None,
                "2021-09-24T09:30:00+02:15",
                "2021-09-24T10:20:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
    Case(
        "SIU_S26__fhirconverter_2.hl7",
        "MSG00026",
        (
            E(
                "appointment.noshow",
                "36996",
                "noshow",
                "PATID1234",
                None,
                "2021-08-18T11:30:00+02:15",
                "2021-08-18T12:30:00+02:15",
            ),
        ),
        ("phone.invalid",),
    ),
]


def _read(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


class TestCorpus:
    def test_every_corpus_file_has_a_case(self) -> None:
        assert sorted(p.name for p in CORPUS.glob("*.hl7")) == sorted(c.file for c in CASES)

    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.file)
    def test_file_gives_the_expected_events_and_problems(self, case: Case) -> None:
        translation = inspect(_read(case.file), tz="America/New_York", region="US")

        assert translation.message_id == case.message_id
        assert tuple(_actual(e) for e in translation.events) == case.events
        assert tuple(sorted({p.code for p in translation.problems})) == case.problems

    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.file)
    def test_every_datetime_is_timezone_aware_and_json_round_trips(self, case: Case) -> None:
        translation = inspect(_read(case.file), tz="Europe/London", region="GB")

        for event in translation.events:
            assert event.occurred_at.tzinfo is not None
            if isinstance(event, AppointmentEvent):
                for value in (event.appointment.start, event.appointment.end):
                    assert value is None or value.utcoffset() is not None
        assert json.loads(json.dumps(translation.marshal()))["events"] is not None

    def test_times_without_offset_take_the_configured_zone(self) -> None:
        bogota = inspect(_read("SIU_S12__mieweb_inbound_1.hl7"), tz="America/Bogota")
        event = bogota.events[0]

        assert isinstance(event, AppointmentEvent)
        assert event.appointment.start is not None
        assert event.appointment.start.isoformat() == "2011-06-17T08:45:00-05:00"

    def test_ack_files_are_fatal_so_they_are_never_answered_as_business_messages(self) -> None:
        for name in ("ACK__mieweb_AA_1.hl7", "ACK__mieweb_AE_1.hl7", "ACK__mirth_AA_1.hl7"):
            translation = inspect(_read(name))

            assert translation.fatal
            assert translation.events == ()

    def test_batch_file_translates_the_message_inside(self) -> None:
        translation = inspect(_read("ADT_A04__pythonhl7_batch_1.hl7"))

        assert [type(e) for e in translation.events] == [PatientUpdated]
        assert translation.events[0].source.message_id == "12334456778890"

    @pytest.mark.parametrize("name", sorted(p.name for p in CORPUS.glob("ORU_*.hl7")))
    def test_results_carry_no_test_names_values_or_notes(self, name: str) -> None:
        raw = _read(name)
        message = parse_message(normalise(raw).decode("utf-8"))
        secrets: set[str] = set()
        for seg in message.segments:
            if seg.name == "OBR":
                secrets.update(seg.get(4, c) for c in (1, 2, 5))
            elif seg.name == "OBX":
                secrets.update(seg.get(3, c) for c in (1, 2))
                secrets.add(seg.get(5))
            elif seg.name == "NTE":
                secrets.add(seg.get(3))
        secrets = {s for s in secrets if len(s.strip()) > 3}

        translation = inspect(raw, tz="UTC", region="US")
        text = json.dumps(translation.marshal())

        assert all(isinstance(e, LabResultAvailable) for e in translation.events)
        assert [s for s in secrets if s in text] == []

    @pytest.mark.parametrize(
        ("name", "reason"),
        [
            ("SIU_S12__fhirconverter_1.hl7", "pid.deceased"),
            ("ADT_A08__fhirconverter_2.hl7", "pid.deceased"),
            ("ORU_R01__fhirconverter_4.hl7", "pv1.vip"),
            ("SIU_S12__mieweb_inbound_1.hl7", None),
        ],
    )
    def test_privacy_flags_block_contact_with_a_reason(self, name: str, reason: str | None) -> None:
        event = inspect(_read(name), region="US").events[0]
        patient = event.patient  # type: ignore[attr-defined]

        assert patient.contact_allowed is (reason is None)
        assert patient.contact_block_reason == reason
