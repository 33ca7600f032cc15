"""Properties: events survive marshal/unmarshal; backoff is capped and its floor never drops."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from bridge.domain import (
    EVENT_TYPES,
    AppointmentEvent,
    AppointmentInfo,
    Event,
    LabResultAvailable,
    PatientInfo,
    ResultInfo,
    SourceRef,
)
from bridge.engine.backoff import backoff_ceiling, compute_backoff

text = st.text(min_size=1, max_size=30)
zones = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-12 * 60, 14 * 60))
aware = st.builds(lambda d, z: d.replace(tzinfo=z),
                  st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
                  zones)
patients = st.builds(PatientInfo, id=text, phone=st.none() | st.just("+573001230000"),
                     language=st.sampled_from([None, "es", "en"]), given_name=st.none() | text,
                     contact_allowed=st.booleans())
appointments = st.builds(AppointmentInfo, id=text, status=st.sampled_from(["booked", "cancelled"]),
                         start=st.none() | aware, end=st.none() | aware, system=text,
                         location=st.none() | text)
sources = st.builds(SourceRef, connector=st.sampled_from(["hl7v2", "fhir"]), message_id=text)
appointment_events = st.sampled_from(
    [c for c in EVENT_TYPES.values() if issubclass(c, AppointmentEvent)]
).flatmap(lambda cls: st.builds(cls, source=sources, appointment=appointments,
                                patient=patients, occurred_at=aware))
result_events = st.builds(LabResultAvailable, source=sources, patient=patients, occurred_at=aware,
                          result=st.builds(ResultInfo, id=text, status=st.just("final")))


class TestEventProperties:
    @given(appointment_events | result_events)
    def test_unmarshal_of_marshal_is_the_same_event(self, event):
        assert Event.unmarshal(event.marshal()) == event

    @given(appointment_events)
    def test_occurred_at_is_always_utc(self, event):
        assert event.occurred_at.tzinfo == UTC


class TestBackoffProperties:
    @given(st.integers(1, 200), st.floats(0.1, 100), st.floats(100, 10_000), st.integers(0, 2**32))
    def test_backoff_is_capped_and_its_floor_never_decreases(self, attempt, base, cap, seed):
        delay = compute_backoff(attempt, base=base, maximum=cap, rng=random.Random(seed))
        assert 0 < delay <= cap
        assert backoff_ceiling(attempt + 1, base, cap) >= backoff_ceiling(attempt, base, cap)
        assert delay >= backoff_ceiling(attempt, base, cap) / 2
