"""Translation rules on small synthetic messages (fictional numbers +57300123xxxx, ids only)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import pytest

from bridge.domain import (
    AppointmentCancelled,
    AppointmentEvent,
    AppointmentUpdated,
    LabResultAvailable,
    PatientUpdated,
)
from connectors.hl7v2 import inspect
from connectors.hl7v2._translate import FieldRef, TranslateConfig, translate

MSH = (
    "MSH|^~\\&|HIS|HOSP|BRIDGE|HOSP|20240301090000||{type}|{id}|P|{version}|||||{country}|{charset}"
)
SCH = "SCH|PL-1^HIS|FI-9^HIS|||||||30|MIN|^^^20240305101500^20240305104500||||||||||||||{status}"
PID = "PID|1||MRN-1^^^HOSP^MR||Perez^Ana||19800101|F|||||{phone}|{work}|{lang}"
CO = TranslateConfig(timezone=ZoneInfo("America/Bogota"), phone_region="CO")


def siu(
    event: str = "S12",
    *,
    version: str = "2.5",
    sch: str = SCH,
    status: str = "Booked",
    phone: str = "3001230001^PRN^CP",
    work: str = "",
    lang: str = "",
    extra: tuple[str, ...] = (),
    charset: str = "",
    sep: str = "\r",
) -> bytes:
    segments = [
        MSH.format(type=f"SIU^{event}", id="C-1", version=version, country="", charset=charset),
        sch.format(status=status),
        PID.format(phone=phone, work=work, lang=lang),
        *extra,
    ]
    return (sep.join(segments) + sep).encode("utf-8")


def appointment(payload: bytes, config: TranslateConfig = CO) -> AppointmentEvent:
    translation = translate(payload, config)
    assert not translation.fatal, translation.problems
    assert len(translation.events) == 1
    event = translation.events[0]
    assert isinstance(event, AppointmentEvent)
    return event


def codes(payload: bytes, config: TranslateConfig = CO) -> set[str]:
    return {p.code for p in translate(payload, config).problems}


class TestEnvelope:
    @pytest.mark.parametrize(
        "payload",
        [
            siu(sep="\n"),
            siu(sep="\r\n"),
            b"\xef\xbb\xbf" + siu(),
            b"\x0b" + siu() + b"\x1c\r",
            siu() + b"\r\n  \r\n\n",
            siu().replace(b"\rPID", b"\r\rPID"),
        ],
        ids=["lf", "crlf", "bom", "mllp-framing", "trailing-blanks", "blank-line"],
    )
    def test_line_ending_and_framing_variants_read_the_same(self, payload: bytes) -> None:
        event = appointment(payload)

        assert event.appointment.id == "FI-9"
        assert event.patient.phone == "+573001230001"
        assert event.source.message_id == "C-1"

    def test_message_id_is_the_trimmed_msh10(self) -> None:
        payload = siu().replace(b"|C-1|", b"|  C-1 |")

        assert translate(payload, CO).message_id == "C-1"

    @pytest.mark.parametrize(
        "version", ["2.2", "2.3", "2.3.1", "2.4", "2.5.1", "2.6", "2.7", "2.8"]
    )
    def test_versions_two_point_two_to_two_point_eight_are_read(self, version: str) -> None:
        assert appointment(siu(version=version)).appointment.id == "FI-9"

    @pytest.mark.parametrize(
        ("payload", "code"),
        [
            (b"", "message.empty"),
            (b"\x00\x01garbage\xff", "message.not_hl7"),
            (b"hello world", "message.not_hl7"),
            (b"MSH|", "message.unreadable_header"),
            (siu(version="3.0"), "version.unsupported"),
            (siu(version=""), "version.unsupported"),
            (siu().replace(b"SIU^S12", b"ORM^O01"), "message.unsupported_type"),
            (siu(charset="UNICODE UTF-8").replace(b"Perez", b"P\xe9rez"), "charset.invalid"),
            (siu(charset="ASCII").replace(b"Perez", b"P\xc3\xa9rez"), "charset.invalid"),
        ],
        ids=[
            "empty",
            "binary",
            "text",
            "short-msh",
            "v3",
            "no-version",
            "orm",
            "latin1-in-utf8",
            "utf8-in-ascii",
        ],
    )
    def test_unusable_payloads_are_fatal_with_a_reason(self, payload: bytes, code: str) -> None:
        translation = translate(payload, CO)

        assert translation.fatal
        assert translation.events == ()
        assert code in {p.code for p in translation.problems if p.fatal}

    def test_latin1_bytes_survive_the_utf8_default(self) -> None:
        payload = siu().replace(b"Ana", b"In\xe9s")
        translation = translate(payload, CO)

        assert not translation.fatal
        assert "charset.fallback" in {p.code for p in translation.problems}
        event = translation.events[0]
        assert isinstance(event, AppointmentEvent)
        assert event.patient.given_name == "Inés"

    def test_declared_latin1_is_decoded_as_latin1(self) -> None:
        payload = siu(charset="8859/1").replace(b"Ana", b"In\xe9s")
        translation = translate(payload, CO)

        assert {p.code for p in translation.problems} == set()
        assert translation.events[0].patient.given_name == "Inés"  # type: ignore[attr-defined]

    def test_unsupported_trigger_event_is_ignored_but_not_fatal(self) -> None:
        translation = translate(siu("S23"), CO)

        assert not translation.fatal
        assert translation.events == ()
        assert {p.code for p in translation.problems} == {"event.unsupported"}


class TestAppointment:
    @pytest.mark.parametrize(
        ("event", "cls_name", "status"),
        [
            ("S12", "AppointmentBooked", "booked"),
            ("S13", "AppointmentRescheduled", "booked"),
            ("S14", "AppointmentUpdated", "booked"),
            ("S15", "AppointmentCancelled", "cancelled"),
            ("S16", "AppointmentCancelled", "cancelled"),
            ("S17", "AppointmentDeleted", "entered-in-error"),
            ("S26", "AppointmentNoShow", "noshow"),
        ],
    )
    def test_the_trigger_event_drives_type_and_status(
        self, event: str, cls_name: str, status: str
    ) -> None:
        result = appointment(siu(event, status=""))

        assert type(result).__name__ == cls_name
        assert result.appointment.status == status

    def test_update_takes_its_status_from_the_vendor_map_case_insensitively(self) -> None:
        config = TranslateConfig(status_map={"o": "cancelled"})
        result = appointment(siu("S14", status="O"), config)

        assert isinstance(result, AppointmentUpdated)
        assert result.appointment.status == "cancelled"

    def test_scheduled_and_canceled_spellings_are_known(self) -> None:
        assert appointment(siu("S14", status="SCHEDULED")).appointment.status == "booked"
        assert appointment(siu("S14", status="CANCELED")).appointment.status == "cancelled"

    def test_unknown_status_code_is_reported_but_the_event_stays(self) -> None:
        assert codes(siu("S14", status="Zz")) == {"status.unknown"}

    def test_status_that_contradicts_the_event_is_reported(self) -> None:
        result = translate(siu("S15", status="Booked"), CO)

        assert isinstance(result.events[0], AppointmentCancelled)
        assert {p.code for p in result.problems} == {"status.mismatch"}

    def test_appointment_id_falls_back_to_the_placer_id(self) -> None:
        sch = SCH.replace("FI-9^HIS", "")

        assert appointment(siu(sch=sch)).appointment.id == "PL-1"

    def test_appointment_id_rule_is_configurable(self) -> None:
        config = TranslateConfig(appointment_id=(FieldRef.parse("SCH-1.2"),))

        assert appointment(siu(), config).appointment.id == "HIS"

    def test_missing_appointment_id_is_a_non_fatal_problem(self) -> None:
        sch = SCH.replace("PL-1^HIS|FI-9^HIS", "|")
        translation = translate(siu(sch=sch), CO)

        assert not translation.fatal
        assert translation.events == ()
        assert [(p.code, p.field) for p in translation.problems] == [
            ("appointment.no_id", "SCH-2.1")
        ]

    def test_times_without_offset_take_the_interface_zone(self) -> None:
        result = appointment(siu())

        assert result.appointment.start is not None and result.appointment.end is not None
        assert result.appointment.start.isoformat() == "2024-03-05T10:15:00-05:00"
        assert result.appointment.end.isoformat() == "2024-03-05T10:45:00-05:00"

    def test_tq1_wins_over_sch11(self) -> None:
        tq1 = "TQ1|||||||20240306080000+0100|20240306083000+0100"
        result = appointment(siu(extra=(tq1,)))

        assert result.appointment.start is not None
        assert result.appointment.start.isoformat() == "2024-03-06T08:00:00+01:00"

    def test_end_comes_from_the_duration_when_missing(self) -> None:
        sch = SCH.replace("^^^20240305101500^20240305104500", "^^^202403051015")

        result = appointment(siu(sch=sch))

        assert result.appointment.end is not None
        assert result.appointment.end.isoformat() == "2024-03-05T10:45:00-05:00"

    def test_start_falls_back_to_the_resource_segments(self) -> None:
        sch = "SCH|PL-1|FI-9|||||||||"
        ais = "AIS|1||CONS^Consulta general^L|20240307140000|||20|MIN"
        ail = "AIL|1||^^^^^^^^Sede Norte"
        aip = "AIP|1||77^Rojas^Luis^^^Dr"
        result = appointment(siu(sch=sch, extra=("RGS|1", ais, ail, aip)))

        info = result.appointment
        assert info.start is not None and info.end is not None
        assert (info.start.isoformat(), info.end.isoformat()) == (
            "2024-03-07T14:00:00-05:00",
            "2024-03-07T14:20:00-05:00",
        )
        assert (info.service, info.location, info.practitioner) == (
            "Consulta general",
            "Sede Norte",
            "Dr Luis Rojas",
        )

    def test_no_time_at_all_is_a_non_fatal_problem(self) -> None:
        sch = "SCH|PL-1|FI-9"
        translation = translate(siu(sch=sch), CO)

        assert not translation.fatal
        assert "appointment.no_start" in {p.code for p in translation.problems}
        assert translation.events[0].appointment.start is None  # type: ignore[attr-defined]

    def test_invalid_time_is_reported_with_its_field(self) -> None:
        sch = SCH.replace("20240305101500", "2024-03-05")
        problems = translate(siu(sch=sch), CO).problems

        assert ("time.invalid", "SCH-11.4") in {(p.code, p.field) for p in problems}


@dataclass(frozen=True)
class PhoneCase:
    label: str
    phone: str
    work: str = ""
    expected: str | None = None
    cleared: bool = False
    problems: frozenset[str] = field(default_factory=frozenset)


PHONE_CASES = [
    PhoneCase("cell-by-equipment", "6015550000^PRN^PH~3001230002^PRN^CP", expected="+573001230002"),
    PhoneCase("cell-by-use-code", "6015550000^HOME~3001230003^MOBILE", expected="+573001230003"),
    PhoneCase("international-prefix", "+573001230004^PRN^CP", expected="+573001230004"),
    PhoneCase("double-zero-prefix", "00573001230005", expected="+573001230005"),
    PhoneCase("number-in-components", "^PRN^CP^^57^300^1230006", expected="+573001230006"),
    PhoneCase("work-phone-when-no-home", "", work="3001230007^WPN^CP", expected="+573001230007"),
    PhoneCase("email-skipped", "^NET^Internet^x@example.org~3001230008", expected="+573001230008"),
    PhoneCase("placeholder", "(000)000-0000^ALTERNATE", problems=frozenset({"phone.invalid"})),
    PhoneCase("too-short", "12345^PRN^CP", problems=frozenset({"phone.invalid"})),
    PhoneCase("explicit-delete", '""', cleared=True),
    PhoneCase("explicit-delete-all", '""^MOBILE~""^HOME~""^EMAIL', cleared=True),
    PhoneCase("empty", ""),
]


class TestPatient:
    @pytest.mark.parametrize("case", PHONE_CASES, ids=lambda c: c.label)
    def test_phone_is_chosen_and_normalised(self, case: PhoneCase) -> None:
        translation = translate(siu(phone=case.phone, work=case.work), CO)
        patient = translation.events[0].patient  # type: ignore[attr-defined]

        assert patient.phone == case.expected
        assert patient.phone_cleared is case.cleared
        assert {p.code for p in translation.problems} == set(case.problems)

    def test_phone_problem_names_the_field_and_never_the_number(self) -> None:
        translation = translate(siu(phone="(000)000-0000"), CO)
        problem = translation.problems[0]

        assert problem.field == "PID-13"
        assert "000" not in json.dumps(problem.marshal())

    def test_number_without_country_code_needs_a_region(self) -> None:
        translation = translate(siu(), TranslateConfig(phone_region=None))

        assert translation.events[0].patient.phone is None  # type: ignore[attr-defined]
        assert {p.code for p in translation.problems} == {"phone.invalid"}

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("SPANISH", "es"),
            ("es", "es"),
            ("en-US", "en"),
            ("spa^Spanish^ISO639", "es"),
            ("ara^^HL70296^eng^English-us", "ar"),
            ("ZZZ", None),
            ("", None),
        ],
    )
    def test_language_maps_to_a_two_letter_code(self, value: str, expected: str | None) -> None:
        event = appointment(siu(lang=value))

        assert event.patient.language == expected

    def test_site_language_map_wins(self) -> None:
        config = TranslateConfig(phone_region="CO", language_map={"ESP": "es"})

        assert appointment(siu(lang="ESP"), config).patient.language == "es"

    def test_given_name_comes_from_pid5_component2(self) -> None:
        assert appointment(siu()).patient.given_name == "Ana"

    @pytest.mark.parametrize(
        ("extra", "reason"),
        [
            (("PD1|||||||||||N",), "pd1.publicity"),
            (("PD1|||||||||||F",), "pd1.publicity"),
            (("PD1||||||||||||Y",), "pd1.protection"),
            (("PV1|1|O" + "|" * 14 + "VIP",), "pv1.vip"),
            (("ARV|1|A|DEM|PAT|restricted",), "arv.restricted"),
            (("PD1|||||||||||U|N", "PV1|1|O" + "|" * 14 + "N"), None),
        ],
    )
    def test_privacy_flags_forbid_contact(self, extra: tuple[str, ...], reason: str | None) -> None:
        patient = appointment(siu(extra=extra)).patient

        assert patient.contact_allowed is (reason is None)
        assert patient.contact_block_reason == reason

    def test_death_indicator_forbids_contact(self) -> None:
        pid = PID.format(phone="", work="", lang="") + "|" * 15 + "Y"
        payload = "\r".join(
            [MSH.format(type="ADT^A08", id="A-1", version="2.5", country="", charset=""), pid]
        ).encode()
        event = translate(payload, CO).events[0]

        assert isinstance(event, PatientUpdated)
        assert event.patient.contact_block_reason == "pid.deceased"

    @pytest.mark.parametrize("event", ["A04", "A08", "A31"])
    def test_adt_updates_become_patient_updated(self, event: str) -> None:
        payload = "\r".join(
            [
                MSH.format(type=f"ADT^{event}", id="A-1", version="2.3", country="", charset=""),
                PID.format(phone="3001230009^PRN^CP", work="", lang="SPANISH"),
            ]
        ).encode()
        (result,) = translate(payload, CO).events

        assert isinstance(result, PatientUpdated)
        assert (result.patient.id, result.patient.phone, result.patient.language) == (
            "MRN-1",
            "+573001230009",
            "es",
        )

    def test_patient_id_type_is_preferred(self) -> None:
        pid = "PID|1||X1^^^A^PI~MRN-7^^^HOSP^MR"
        payload = siu().replace(
            PID.format(phone="3001230001^PRN^CP", work="", lang="").encode(), pid.encode()
        )

        assert appointment(payload, TranslateConfig(patient_id_type="MR")).patient.id == "MRN-7"
        assert appointment(payload, TranslateConfig()).patient.id == "X1"


def oru(*segments: str) -> bytes:
    head = [
        MSH.format(type="ORU^R01", id="R-1", version="2.5", country="", charset=""),
        PID.format(phone="", work="", lang=""),
    ]
    return "\r".join([*head, *segments]).encode()


def obr(filler: str, status: str) -> str:
    return (
        f"OBR|1|P-{filler}|{filler}^LAB|GLU^Glucose|||20240301080000"
        + "|" * 15
        + f"20240301100000|||{status}"
    )


class TestResults:
    def test_final_order_gives_one_event_with_ids_only(self) -> None:
        (event,) = translate(
            oru(obr("F-1", "F"), "OBX|1|NM|GLU^Glucose||99|mg/dL|||||F"), CO
        ).events

        assert isinstance(event, LabResultAvailable)
        assert (event.result.id, event.result.status) == ("F-1", "final")
        assert event.result.issued is not None
        assert "Glucose" not in json.dumps(event.marshal())

    def test_corrected_order_is_reported_as_corrected(self) -> None:
        (event,) = translate(oru(obr("F-2", "C")), CO).events

        assert event.result.status == "corrected"  # type: ignore[attr-defined]

    @pytest.mark.parametrize("status", ["P", "I", "A", "R", "X"])
    def test_orders_not_final_give_nothing(self, status: str) -> None:
        assert translate(oru(obr("F-3", status), "OBX|1|NM|X||1||||||F"), CO).events == ()

    def test_blank_status_uses_every_obx_being_final(self) -> None:
        final = oru(obr("F-4", ""), "OBX|1|NM|X||1||||||F", "OBX|2|NM|Y||2||||||F")
        partial = oru(obr("F-4", ""), "OBX|1|NM|X||1||||||F", "OBX|2|NM|Y||2||||||P")

        assert len(translate(final, CO).events) == 1
        assert translate(partial, CO).events == ()

    def test_one_event_per_filler_order(self) -> None:
        payload = oru(obr("F-5", "F"), obr("F-5", "F"), obr("F-6", "F"), obr("F-7", "P"))

        assert [e.result.id for e in translate(payload, CO).events] == ["F-5", "F-6"]  # type: ignore[attr-defined]

    def test_filler_number_falls_back_to_orc3(self) -> None:
        payload = oru("ORC|RE||ORC-9", "OBR|1|||GLU" + "|" * 21 + "F")

        assert [e.result.id for e in translate(payload, CO).events] == ["ORC-9"]  # type: ignore[attr-defined]

    def test_final_order_without_any_id_is_a_problem(self) -> None:
        payload = oru("OBR|1|||GLU" + "|" * 21 + "F")
        translation = translate(payload, CO)

        assert translation.events == ()
        assert {p.code for p in translation.problems} == {"result.no_id"}


class TestInspect:
    def test_inspect_uses_the_given_zone_and_region(self) -> None:
        event = inspect(siu(), tz="America/Bogota", region="co").events[0]

        assert event.patient.phone == "+573001230001"  # type: ignore[attr-defined]
        assert event.appointment.start.utcoffset().total_seconds() == -5 * 3600  # type: ignore[attr-defined]

    @pytest.mark.parametrize(
        ("tz", "region", "code"), [("Mars/Base", None, "option.tz"), (None, "XX", "option.region")]
    )
    def test_bad_options_are_fatal_problems(
        self, tz: str | None, region: str | None, code: str
    ) -> None:
        translation = inspect(siu(), tz=tz, region=region)

        assert translation.fatal
        assert [p.code for p in translation.problems] == [code]
