"""Property: the ER7 reader gives back what the writer wrote, escapes and repetitions included."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from connectors.hl7v2._segments import (
    DEFAULT_SEPARATORS,
    escape,
    format_field,
    format_segment,
    normalise,
    parse_field,
    parse_message,
    unescape,
)

# any text, separators, escape character and line breaks included
leaf = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=12)
field_value = st.lists(
    st.lists(st.lists(leaf, min_size=1, max_size=3), min_size=1, max_size=4), min_size=1, max_size=3
)
# ordinary segments; MSH/BHS/FHS are headers with their own grammar (MSH-1 is the separator)
segment_name = st.from_regex(r"[A-Z][A-Z0-9]{2}", fullmatch=True).filter(
    lambda n: n not in ("MSH", "BHS", "FHS")
)
segments = st.lists(
    st.tuples(segment_name, st.lists(field_value, min_size=1, max_size=6)), min_size=1, max_size=6
)


class TestRoundTrip:
    @given(leaf)
    def test_unescape_inverts_escape(self, text: str) -> None:
        assert unescape(escape(text)) == text

    @given(field_value)
    def test_parse_field_inverts_format_field(self, value: list[list[list[str]]]) -> None:
        assert parse_field(format_field(value)) == value

    @given(segments)
    def test_parse_message_inverts_serialisation(
        self, model: list[tuple[str, list[list[list[list[str]]]]]]
    ) -> None:
        msh = "MSH|^~\\&|APP|FAC|||20240101||ADT^A08|X1|P|2.5"
        text = "\r".join([msh, *(format_segment(name, fields) for name, fields in model)])

        message = parse_message(normalise(text.encode("utf-8")).decode("utf-8"))

        parsed = [
            (seg.name, [parse_field(seg.raw(n), message.seps) for n in range(1, len(seg) + 1)])
            for seg in message.segments[1:]
        ]
        assert parsed == model
        assert message.segments[0].get(9, 2) == "A08"

    @given(field_value)
    def test_get_reads_the_component_the_model_holds(self, value: list[list[list[str]]]) -> None:
        text = "MSH|^~\\&|A\r" + format_segment("ZZZ", [value])
        seg = parse_message(text).segments[1]

        for r, rep in enumerate(value):
            for c, comp in enumerate(rep, start=1):
                for s, sub in enumerate(comp, start=1):
                    assert seg.get(1, c, s, rep=r) == sub

    def test_hex_and_line_break_escapes_are_decoded(self) -> None:
        assert unescape("a\\X0A\\b\\.br\\c\\H\\d\\N\\", DEFAULT_SEPARATORS) == "a\nb\ncd"
        assert unescape("caf\\XC3A9\\") == "café"
