"""The string helpers behind mappings: cleaning, cutting, placeholders, zones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.engine.formatting import (
    DateStyle,
    PlaceholderSyntaxError,
    clean_text,
    first_word,
    format_short_date,
    interpolate,
    placeholders,
    resolve_zone,
    template_placeholders,
    truncate,
)
from bridge.errors import MappingError


@dataclass(frozen=True)
class CleanCase:
    label: str
    raw: str
    clean: str


CLEAN_CASES = [
    CleanCase("newline and tab become one space", "Sede\n\tNorte", "Sede Norte"),
    CleanCase("five spaces become one", "a     b", "a b"),
    CleanCase("narrow no-break space becomes a space", "9:30\u202fPM", "9:30 PM"),
    CleanCase("controls are dropped", "A\x00n\x1ba", "Ana"),
    CleanCase("private use characters are dropped", "Ana\ue000", "Ana"),
    CleanCase("emoji stay", "Ana 🌻", "Ana 🌻"),
    CleanCase("only whitespace is empty", " \n\t ", ""),
]


class TestCleanText:
    @pytest.mark.parametrize("case", CLEAN_CASES, ids=lambda c: c.label)
    def test_values_become_one_safe_line(self, case: CleanCase) -> None:
        assert clean_text(case.raw) == case.clean

    @given(st.text())
    def test_cleaning_is_idempotent_and_leaves_no_meta_forbidden_whitespace(self, raw: str) -> None:
        once = clean_text(raw)

        assert clean_text(once) == once
        assert "\n" not in once and "\t" not in once and "  " not in once


class TestTruncate:
    @given(st.text(), st.integers(1, 50))
    def test_a_cut_string_fits_its_limit_and_ends_in_an_ellipsis(
        self, text: str, limit: int
    ) -> None:
        cut = truncate(text, limit)

        assert len(cut) <= limit
        assert cut == text or cut.endswith("…")

    def test_a_short_string_is_left_alone(self) -> None:
        assert truncate("Sede", 24) == "Sede"


class TestPlaceholders:
    def test_field_names_are_listed_in_order(self) -> None:
        assert placeholders("el {appointment.date} a las {appointment.time}") == [
            "appointment.date",
            "appointment.time",
        ]

    @pytest.mark.parametrize("text", ["{", "a } b", "{{1}}", "{Appointment Date}", "{}"])
    def test_malformed_placeholders_are_refused(self, text: str) -> None:
        with pytest.raises(PlaceholderSyntaxError):
            placeholders(text)

    def test_a_value_ending_in_a_period_does_not_double_the_sentence_period(self) -> None:
        assert interpolate("a las {t}.", {"t": "9:30 p. m."}) == "a las 9:30 p. m."
        assert interpolate("a las {t}?", {"t": "9:30 p. m."}) == "a las 9:30 p. m.?"

    def test_template_placeholders_are_distinct_numbers(self) -> None:
        assert template_placeholders("{{1}} {{ 2 }} {{1}} {{10}}") == [1, 2, 10]


class TestDates:
    def test_an_unknown_zone_is_a_mapping_error(self) -> None:
        with pytest.raises(MappingError):
            resolve_zone("Nowhere/Atlantis")

    def test_a_short_spanish_date_fits_a_list_row_with_the_time(self) -> None:
        # September has the longest short month name in es_CO ("sept").
        moment = datetime(2024, 9, 28, 15, 30, tzinfo=UTC)

        assert (
            format_short_date(moment, "America/Bogota", DateStyle(locale="es_CO")) == "sáb 28 sept"
        )

    def test_a_date_style_reports_an_unknown_locale(self) -> None:
        assert DateStyle(locale="zz_ZZ").check()[0][0] == "locale"

    @pytest.mark.parametrize(
        ("name", "word"), [("María José", "María"), ("  Ana\n", "Ana"), (None, None), ("\t", None)]
    )
    def test_the_first_word_of_a_name(self, name: str | None, word: str | None) -> None:
        assert first_word(name) == word
