"""Rendering the shipped mappings: every kind in es and en, dates, fallbacks, limits, failures."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bridge.domain import AppointmentInfo, FreeSlot, PatientInfo
from bridge.engine.mappings import KINDS, MappingSet, RenderContext
from bridge.errors import MappingError
from bridge.ports import Notification
from bridge.whatsapp import build_message
from tests.engine_mappings.support import LATE_EVENING_BOGOTA, replace_in, synthetic_context

TEMPLATE_KINDS = ("reminder", "results", "confirmed", "cancelled", "rescheduled")


def _notification(kind: str, content: dict[str, Any]) -> Notification:
    return Notification(outbox_id=7, to="+573001230001", kind=kind, content=content)


class TestShippedMappings:
    def test_the_shipped_mappings_declare_spanish_and_english_with_spanish_default(
        self, mappings: MappingSet
    ) -> None:
        assert mappings.languages() == {"es", "en"}
        assert mappings.default_language == "es"

    @pytest.mark.parametrize("language", ["es", "en"])
    @pytest.mark.parametrize("kind", sorted(KINDS))
    def test_every_kind_renders_to_a_message_whatsapp_accepts(
        self, mappings: MappingSet, kind: str, language: str
    ) -> None:
        """Each rendered content goes through the channel's own request builder and limits."""
        notification_kind, content = mappings.render(kind, language, synthetic_context())

        body = build_message(_notification(notification_kind, content))

        assert body["to"] == "+573001230001"
        wire_type = {"template": "template", "text": "text"}.get(notification_kind, "interactive")
        assert body["type"] == wire_type
        assert (notification_kind == "template") == (kind in TEMPLATE_KINDS)

    @pytest.mark.parametrize(
        ("language", "code"), [("es", "es"), ("en", "en_US"), ("en-GB", "en_US"), ("fr", "es")]
    )
    def test_the_reminder_uses_the_meta_language_code_of_the_patients_language(
        self, mappings: MappingSet, language: str, code: str
    ) -> None:
        _, content = mappings.render("reminder", language, synthetic_context())

        assert content["name"] == "appointment_reminder"
        assert content["language"] == code

    def test_the_reminder_carries_name_date_time_location_and_three_payload_buttons(
        self, mappings: MappingSet
    ) -> None:
        kind, content = mappings.render("reminder", "es", synthetic_context())

        assert kind == "template"
        assert content == {
            "name": "appointment_reminder",
            "language": "es",
            "body": ["Ana", "miércoles, 6 de noviembre de 2024", "9:30 p. m.", "Sede Norte"],
            "buttons": [
                {"index": 0, "sub_type": "quick_reply", "payload": "confirm.tok00"},
                {"index": 1, "sub_type": "quick_reply", "payload": "reschedule.tok01"},
                {"index": 2, "sub_type": "quick_reply", "payload": "cancel.tok02"},
            ],
        }

    @pytest.mark.parametrize("language", ["es", "en"])
    def test_the_results_notice_carries_the_first_name_and_the_portal_token_only(
        self, mappings: MappingSet, language: str
    ) -> None:
        _, content = mappings.render("results", language, synthetic_context())

        assert content["body"] == ["Ana"]
        assert content["buttons"] == [{"index": 0, "sub_type": "url", "text": "v1.AbCdEf0123.sig"}]
        assert "Medicina" not in str(content)

    @pytest.mark.parametrize(
        ("language", "body", "titles"),
        [
            (
                "es",
                "¿Desea cancelar su cita del miércoles, 6 de noviembre de 2024 a las 9:30 p. m.?",
                ["Sí, cancelar", "No, mantener"],
            ),
            (
                "en",
                "Do you want to cancel your appointment on Wednesday, November 6, 2024 at 9:30 PM?",
                ["Yes, cancel", "No, keep it"],
            ),
        ],
    )
    def test_the_cancel_question_has_yes_and_keep_buttons_with_their_payloads(
        self, mappings: MappingSet, language: str, body: str, titles: list[str]
    ) -> None:
        kind, content = mappings.render("cancel_question", language, synthetic_context())

        assert kind == "buttons"
        assert content == {
            "body": body,
            "buttons": [
                {"id": "cancel_yes.tok03", "title": titles[0]},
                {"id": "keep.tok04", "title": titles[1]},
            ],
        }

    @pytest.mark.parametrize(
        ("language", "label", "first_title"),
        [
            ("es", "Ver horarios", "mar 12 nov 9:00 a. m."),
            ("en", "See times", "Tue Nov 12 9:00 AM"),
        ],
    )
    def test_the_slot_list_has_one_row_per_slot_with_its_payload_and_a_short_title(
        self, mappings: MappingSet, language: str, label: str, first_title: str
    ) -> None:
        kind, content = mappings.render("slot_list", language, synthetic_context())

        assert kind == "list"
        assert content["button"] == label
        rows = content["sections"][0]["rows"]
        assert [row["id"] for row in rows] == ["slot.tok0", "slot.tok1", "slot.tok2"]
        assert rows[0]["title"] == first_title
        assert all(len(row["title"]) <= 24 for row in rows)
        assert all(len(row.get("description", "")) <= 72 for row in rows)

    def test_the_survey_offers_five_ratings_with_their_payloads(self, mappings: MappingSet) -> None:
        kind, content = mappings.render("survey", "es", synthetic_context())

        assert kind == "list"
        rows = content["sections"][0]["rows"]
        assert [row["id"] for row in rows] == [f"rating{n}.tok{n + 4:02d}" for n in range(1, 6)]

    @pytest.mark.parametrize("kind", ["confirmed_text", "cancelled_text", "rescheduled_text"])
    def test_window_texts_never_end_a_time_with_a_double_period(
        self, mappings: MappingSet, kind: str
    ) -> None:
        _, content = mappings.render(kind, "es", synthetic_context())

        assert "p. m." in content["body"]
        assert ".." not in content["body"]


@dataclass(frozen=True)
class DateCase:
    label: str
    start: datetime
    zone: str
    language: str
    date: str
    time: str


DATE_CASES = [
    DateCase(
        "bogota keeps the previous day late in the evening",
        LATE_EVENING_BOGOTA,
        "America/Bogota",
        "es",
        "miércoles, 6 de noviembre de 2024",
        "9:30 p. m.",
    ),
    DateCase(
        "the same instant in UTC is already the next day",
        LATE_EVENING_BOGOTA,
        "UTC",
        "es",
        "jueves, 7 de noviembre de 2024",
        "2:30 a. m.",
    ),
    DateCase(
        "an early bogota morning is the same day in UTC",
        datetime(2024, 3, 1, 13, 5, tzinfo=UTC),
        "America/Bogota",
        "es",
        "viernes, 1 de marzo de 2024",
        "8:05 a. m.",
    ),
    DateCase(
        "english names in the clinic's zone",
        LATE_EVENING_BOGOTA,
        "America/Bogota",
        "en",
        "Wednesday, November 6, 2024",
        "9:30 PM",
    ),
    DateCase(
        "a start given with another offset is converted to the clinic's zone",
        datetime(2025, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
        "America/Bogota",
        "es",
        "martes, 31 de diciembre de 2024",
        "6:30 p. m.",
    ),
]


class TestDates:
    @pytest.mark.parametrize("case", DATE_CASES, ids=lambda c: c.label)
    def test_dates_and_times_are_localised_in_the_clinics_zone(
        self, mappings: MappingSet, case: DateCase
    ) -> None:
        appointment = AppointmentInfo(id="A-1", status="booked", start=case.start, location="Sede")
        context = synthetic_context(appointment=appointment, timezone=case.zone)

        _, content = mappings.render("confirmed", case.language, context)

        assert content["body"] == [case.date, case.time]

    def test_spanish_day_and_month_names_appear_in_the_reminder(self, mappings: MappingSet) -> None:
        _, content = mappings.render("reminder", "es", synthetic_context())

        assert "miércoles" in content["body"][1]
        assert "noviembre" in content["body"][1]

    def test_template_parameters_have_no_narrow_no_break_spaces(self, mappings: MappingSet) -> None:
        """babel writes "9:30\u202fp.\u202fm."; phones and Meta get plain spaces."""
        _, content = mappings.render("confirmed", "en", synthetic_context())

        assert content["body"][1] == "9:30 PM"


@dataclass(frozen=True)
class LanguageCase:
    label: str
    language: str | None
    chosen: str


LANGUAGE_CASES = [
    LanguageCase("missing language gets the default", None, "es"),
    LanguageCase("empty language gets the default", "", "es"),
    LanguageCase("unknown language gets the default", "fr", "es"),
    LanguageCase("a region tag picks its language", "en-GB", "en"),
    LanguageCase("meta style codes pick their language", "en_US", "en"),
    LanguageCase("case does not matter", "EN", "en"),
    LanguageCase("spanish for colombia", "es-CO", "es"),
]


class TestLanguages:
    @pytest.mark.parametrize("case", LANGUAGE_CASES, ids=lambda c: c.label)
    def test_the_patients_language_picks_a_file_or_falls_back_to_the_default(
        self, mappings: MappingSet, case: LanguageCase
    ) -> None:
        assert mappings.language_for(case.language) == case.chosen

    def test_a_kind_missing_in_the_patients_language_falls_back_to_the_default(
        self, site: Path
    ) -> None:
        (site / "en" / "survey_thanks.toml").unlink()
        mappings = MappingSet.load(site)

        _, content = mappings.render("survey_thanks", "en", synthetic_context())

        assert content["body"].startswith("Gracias")


@dataclass(frozen=True)
class ValueCase:
    label: str
    language: str
    given_name: str | None
    location: str | None
    first_name: str
    place: str


VALUE_CASES = [
    ValueCase(
        "first word of the given name", "es", "María José", "Sede Norte", "María", "Sede Norte"
    ),
    ValueCase("no given name in spanish", "es", None, "Sede Norte", "paciente", "Sede Norte"),
    ValueCase("blank given name in english", "en", "   \n", "North", "there", "North"),
    ValueCase("no location uses the file's word", "es", "Ana", None, "Ana", "nuestra sede"),
    ValueCase(
        "newlines and tabs collapse", "es", "\n Ana\tMaría", "Sede\t\tNorte\n", "Ana", "Sede Norte"
    ),
    ValueCase("runs of spaces collapse", "en", "Ana", "North      Clinic", "Ana", "North Clinic"),
    ValueCase("control characters are dropped", "en", "A\x00na", "No\x07rth", "Ana", "North"),
]


class TestValues:
    @pytest.mark.parametrize("case", VALUE_CASES, ids=lambda c: c.label)
    def test_names_and_places_are_cleaned_and_fall_back_to_a_neutral_word(
        self, mappings: MappingSet, case: ValueCase
    ) -> None:
        base = synthetic_context()
        assert base.appointment is not None
        context = synthetic_context(
            patient=PatientInfo(id="P-1", given_name=case.given_name),
            appointment=dataclasses.replace(base.appointment, location=case.location),
        )

        _, content = mappings.render("reminder", case.language, context)

        assert content["body"][0] == case.first_name
        assert content["body"][3] == case.place

    def test_a_long_location_is_cut_with_an_ellipsis(self, mappings: MappingSet) -> None:
        base = synthetic_context()
        assert base.appointment is not None
        context = synthetic_context(
            appointment=dataclasses.replace(base.appointment, location="Sede " + "x" * 300)
        )

        _, content = mappings.render("reminder", "es", context)

        assert len(content["body"][3]) == 100
        assert content["body"][3].endswith("…")

    def test_more_than_ten_slots_are_cut_to_the_ten_a_list_can_hold(
        self, mappings: MappingSet
    ) -> None:
        start = datetime(2024, 11, 12, 14, 0, tzinfo=UTC)
        slots = tuple(
            FreeSlot(
                id=str(n), start=start + timedelta(hours=n), end=start + timedelta(hours=n + 1)
            )
            for n in range(12)
        )
        context = synthetic_context(
            slots=slots, slot_payloads=tuple(f"slot.{n}" for n in range(12))
        )

        _, content = mappings.render("slot_list", "es", context)

        assert len(content["sections"][0]["rows"]) == 10


def _without_payload(key: str) -> RenderContext:
    base = synthetic_context()
    return synthetic_context(payloads={k: v for k, v in base.payloads.items() if k != key})


@dataclass(frozen=True)
class FailureCase:
    label: str
    kind: str
    context: RenderContext
    reason: str


_BASE = synthetic_context()
assert _BASE.appointment is not None
FAILURE_CASES = [
    FailureCase(
        "a reminder without start time",
        "reminder",
        synthetic_context(appointment=dataclasses.replace(_BASE.appointment, start=None)),
        "appointment start",
    ),
    FailureCase(
        "a reminder without appointment",
        "reminder",
        synthetic_context(appointment=None),
        "needs an appointment",
    ),
    FailureCase(
        "a reminder without its confirm payload",
        "reminder",
        _without_payload("confirm"),
        "no payload for 'confirm'",
    ),
    FailureCase(
        "a results notice without token",
        "results",
        synthetic_context(portal_token=None),
        "portal.token is missing",
    ),
    FailureCase(
        "a token with a space", "results", synthetic_context(portal_token="a b"), "plain URL suffix"
    ),
    FailureCase(
        "an unknown time zone",
        "confirmed",
        synthetic_context(timezone="Mars/Olympus"),
        "unknown time zone",
    ),
    FailureCase(
        "a slot list without slots",
        "slot_list",
        synthetic_context(slots=(), slot_payloads=()),
        "no slots",
    ),
    FailureCase(
        "slots and payloads of different lengths",
        "slot_list",
        synthetic_context(slot_payloads=("slot.a",)),
        "slot payload",
    ),
    FailureCase(
        "a payload over meta's 256 characters",
        "reminder",
        synthetic_context(payloads={**_BASE.payloads, "cancel": "c" * 257}),
        "longer than 256",
    ),
    FailureCase(
        "two buttons with one payload",
        "cancel_question",
        synthetic_context(payloads={**_BASE.payloads, "keep": _BASE.payloads["cancel_yes"]}),
        "same payload",
    ),
    FailureCase("an unknown kind", "birthday", synthetic_context(), "no mapping"),
]


class TestRenderFailures:
    @pytest.mark.parametrize("case", FAILURE_CASES, ids=lambda c: c.label)
    def test_an_unrenderable_message_raises_mapping_error_without_patient_data(
        self, mappings: MappingSet, case: FailureCase
    ) -> None:
        with pytest.raises(MappingError) as caught:
            mappings.render(case.kind, "es", case.context)

        message = str(caught.value)
        assert case.reason in message
        for phi in ("Ana", "Sede Norte", "+573001230001"):
            assert phi not in message

    def test_a_malformed_context_is_a_mapping_error_too(self, mappings: MappingSet) -> None:
        context = synthetic_context(patient="not a patient")

        with pytest.raises(MappingError):
            mappings.render("reminder", "es", context)


class TestHeaders:
    def test_a_header_parameter_is_rendered_and_cut_to_metas_60_characters(
        self, site: Path
    ) -> None:
        # Given a site whose reminder declares a text header with the location
        replace_in("es/reminder.toml", "name = ", 'header = "Cita en {{1}}"\nname = ')(site)
        replace_in(
            "es/reminder.toml",
            "[parameters]\n",
            '[parameters]\nheader = ["appointment.location"]\n',
        )(site)
        mappings = MappingSet.load(site)
        base = synthetic_context()
        assert base.appointment is not None
        context = synthetic_context(
            appointment=dataclasses.replace(base.appointment, location="Sede " + "n" * 90)
        )

        # When the reminder is rendered
        _, content = mappings.render("reminder", "es", context)

        # Then the header is cut with an ellipsis and the channel accepts the message
        assert len(content["header"]) == 1
        assert len(content["header"][0]) == 60
        assert content["header"][0].endswith("…")
        assert {(s.name, s.language, s.header) for s in mappings.template_specs()} >= {
            ("appointment_reminder", "es", 1)
        }
        build_message(_notification("template", content))
