"""Mapping totality: any context renders within the template's contract, or raises MappingError.

Generated contexts vary time zones (real, fixed-offset and nonsense), Unicode names and places
(controls, newlines, emoji, long text), missing optionals, any language string, payloads that
are missing, empty, long or repeated, and slot lists of any length.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.domain import AppointmentInfo, FreeSlot, PatientInfo
from bridge.engine.mappings import KINDS, MappingSet, RenderContext
from bridge.errors import MappingError, MessageRejected
from bridge.ports import Notification
from bridge.whatsapp import build_message
from tests.engine_mappings.support import PAYLOAD_KEYS

_MAPPINGS = MappingSet.default()
_SPECS = {(s.name, s.language): s for s in _MAPPINGS.template_specs()}

#: Meta's per-parameter limit (reference whatsapp.md §1.2) and our tighter display caps.
_BODY_PARAM_LIMIT = 1024

_zones = st.one_of(
    st.sampled_from(sorted(zoneinfo.available_timezones())[:600:7]),
    st.sampled_from(["America/Bogota", "UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"]),
    st.text(max_size=30),
)
_offsets = st.builds(
    lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60)
)
_moments = st.builds(
    lambda naive, tz: naive.replace(tzinfo=tz),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.one_of(st.just(UTC), _offsets),
)
_names = st.one_of(st.none(), st.text(max_size=60), st.text(alphabet=" \n\t\r\u202f", max_size=8))
_payload_values = st.one_of(st.text(max_size=20), st.text(min_size=250, max_size=300))
_payloads = st.dictionaries(
    st.sampled_from(PAYLOAD_KEYS), _payload_values, max_size=len(PAYLOAD_KEYS)
) | st.builds(lambda s: {k: f"{k}.{s}" for k in PAYLOAD_KEYS}, st.text("abcXYZ019_-", max_size=40))
_slots = st.lists(st.builds(lambda m: FreeSlot(id="S", start=m, end=m), _moments), max_size=12)


@st.composite
def contexts(draw: st.DrawFn) -> RenderContext:
    appointment = draw(
        st.none()
        | st.builds(
            AppointmentInfo,
            id=st.just("A-1"),
            status=st.just("booked"),
            start=st.none() | _moments,
            location=_names,
            practitioner=_names,
        )
    )
    slots = draw(_slots)
    slot_payloads = draw(
        st.just([f"slot.{n}" for n in range(len(slots))])
        | st.lists(st.text(max_size=210), max_size=12)
    )
    return RenderContext(
        patient=PatientInfo(id="P-1", given_name=draw(_names), language=draw(st.text(max_size=8))),
        appointment=appointment,
        timezone=draw(_zones),
        portal_token=draw(st.none() | st.text(max_size=40) | st.text("abcXYZ019.-_", min_size=1)),
        payloads=draw(_payloads),
        slots=slots,
        slot_payloads=slot_payloads,
    )


def _assert_template_contract(content: dict[str, Any]) -> None:
    spec = _SPECS[(content["name"], content["language"])]
    assert len(content["body"]) == spec.body
    assert len(content.get("header", [])) == spec.header
    assert tuple(b["sub_type"].upper() for b in content["buttons"]) == spec.buttons
    assert [b["index"] for b in content["buttons"]] == list(range(len(spec.buttons)))
    for param in [*content["body"], *content.get("header", [])]:
        assert param == param.strip() and param
        assert "\n" not in param and "\t" not in param and "     " not in param
        assert len(param) <= _BODY_PARAM_LIMIT


class TestRenderTotality:
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        kind=st.sampled_from(sorted(KINDS)),
        language=st.none() | st.text(max_size=10) | st.sampled_from(["es", "en", "en_US", "es-CO"]),
        context=contexts(),
    )
    def test_any_context_renders_within_contract_or_raises_mapping_error(
        self, kind: str, language: str | None, context: RenderContext
    ) -> None:
        try:
            notification_kind, content = _MAPPINGS.render(kind, language, context)
        except MappingError:
            return
        if notification_kind == "template":
            _assert_template_contract(content)
        notification = Notification(
            outbox_id=1, to="+573001230001", kind=notification_kind, content=content
        )
        try:
            build_message(notification)
        except MessageRejected as exc:  # pragma: no cover - the failure message is the point
            raise AssertionError(
                f"{kind}: the channel refused the rendered content: {exc}"
            ) from exc
