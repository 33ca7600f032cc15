"""Canonical events: what the EHR and the patient told us, in the bridge's own words.

Connectors translate HL7 v2, FHIR and Graph API payloads into these classes; nothing past the
connector sees a vendor type. Each event is a frozen dataclass named as a past-tense fact, with
``marshal()``/``unmarshal()`` so it can live in the store as JSON.

The JSON shape is the ``bridge inspect`` contract (DESIGN.md §4)::

    {"type": "appointment.booked",
     "source": {"connector": "hl7v2", "message_id": "MSG00001"},
     "appointment": {"id": "149549015", "status": "booked",
                     "start": "2024-11-06T12:00:00+00:00", "end": "2024-11-06T12:30:00+00:00"},
     "patient": {"id": "10769857", "phone": "+447700900123", "language": "en"},
     "result": null}
"""

from __future__ import annotations

__all__ = [
    "EVENT_TYPES",
    "AppointmentBooked",
    "AppointmentCancelled",
    "AppointmentDeleted",
    "AppointmentEvent",
    "AppointmentInfo",
    "AppointmentNoShow",
    "AppointmentRescheduled",
    "AppointmentUpdated",
    "Event",
    "LabResultAvailable",
    "PatientInfo",
    "PatientUpdated",
    "ReplyReceived",
    "ResultInfo",
    "SourceRef",
    "StatusUpdated",
    "TemplateStatusChanged",
    "as_aware_utc",
    "new_event_id",
]

import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, ClassVar, Self


def new_event_id() -> str:
    """A fresh random event id (uuid4 hex)."""
    return uuid.uuid4().hex


def as_aware_utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; refuse naive datetimes instead of guessing their zone.

    Raises:
        ValueError: ``value`` has no tzinfo.
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must be timezone-aware")
    return value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(str(value))


@dataclass(frozen=True, kw_only=True, slots=True)
class SourceRef:
    """Where an event came from: the connector and the source message id (MSH-10, id/_history)."""

    connector: str
    message_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PatientInfo:
    """What the bridge needs to know about a patient to message them.

    ``given_name`` is PHI: it may reach a template parameter, never a log. ``phone`` is E.164 or
    None; ``phone_cleared`` is True when the EHR explicitly deleted the number (HL7 ``""``).
    ``contact_allowed`` is False when an EHR privacy flag forbids contact, with the reason code.
    """

    id: str
    phone: str | None = None
    language: str | None = None
    given_name: str | None = None
    phone_cleared: bool = False
    contact_allowed: bool = True
    contact_block_reason: str | None = None

    def marshal(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "id": self.id,
            "phone": self.phone,
            "language": self.language,
            "given_name": self.given_name,
            "phone_cleared": self.phone_cleared,
            "contact_allowed": self.contact_allowed,
            "contact_block_reason": self.contact_block_reason,
        }

    @classmethod
    def unmarshal(cls, data: dict[str, Any]) -> Self:
        """Inverse of :meth:`marshal`."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True, kw_only=True, slots=True)
class AppointmentInfo:
    """An appointment as the bridge sees it.

    ``status`` is one of FHIR's Appointment statuses (booked, cancelled, noshow, fulfilled,
    proposed, pending, arrived, checked-in, waitlist, entered-in-error), the common vocabulary
    both connectors map to. ``system`` namespaces ``id`` per source (interface name, FHIR base).
    ``location``, ``practitioner`` and ``service`` are display texts for templates; ``service``
    can be sensitive and is only used where a site's mapping allows it.
    """

    id: str
    status: str
    start: datetime | None = None
    end: datetime | None = None
    system: str = ""
    version: str | None = None
    location: str | None = None
    practitioner: str | None = None
    service: str | None = None
    schedule_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is not None and (value.tzinfo is None or value.utcoffset() is None):
                raise ValueError(f"AppointmentInfo.{name} must be timezone-aware")

    def marshal(self) -> dict[str, Any]:
        """Return a JSON-able dict (times as ISO 8601 with their offset)."""
        return {
            "id": self.id,
            "status": self.status,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "system": self.system,
            "version": self.version,
            "location": self.location,
            "practitioner": self.practitioner,
            "service": self.service,
            "schedule_id": self.schedule_id,
        }

    @classmethod
    def unmarshal(cls, data: dict[str, Any]) -> Self:
        """Inverse of :meth:`marshal`."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["start"] = _parse_dt(values.get("start"))
        values["end"] = _parse_dt(values.get("end"))
        return cls(**values)


@dataclass(frozen=True, kw_only=True, slots=True)
class ResultInfo:
    """A result that became final. Carries ids and status only: never test names or values."""

    id: str
    status: str
    system: str = ""
    issued: datetime | None = None

    def marshal(self) -> dict[str, Any]:
        """Return a JSON-able dict."""
        return {
            "id": self.id,
            "status": self.status,
            "system": self.system,
            "issued": _iso(self.issued),
        }

    @classmethod
    def unmarshal(cls, data: dict[str, Any]) -> Self:
        """Inverse of :meth:`marshal`."""
        return cls(
            id=data["id"],
            status=data["status"],
            system=data.get("system", ""),
            issued=_parse_dt(data.get("issued")),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Base of every canonical event.

    Attributes:
        source: connector and source message id.
        event_id: unique id, generated when not given.
        occurred_at: timezone-aware; stored in UTC (checked on construction).
    """

    type: ClassVar[str] = "event"

    source: SourceRef
    event_id: str = field(default_factory=new_event_id)
    occurred_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def __post_init__(self) -> None:
        object.__setattr__(self, "occurred_at", as_aware_utc(self.occurred_at))

    def marshal(self) -> dict[str, Any]:
        """Return the JSON-able form used by the store and ``bridge inspect``."""
        return {
            "type": self.type,
            "event_id": self.event_id,
            "occurred_at": self.occurred_at.isoformat(),
            "source": {"connector": self.source.connector, "message_id": self.source.message_id},
            **self._body(),
        }

    def _body(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def unmarshal(data: dict[str, Any]) -> Event:
        """Rebuild any event from :meth:`marshal` output.

        Raises:
            ValueError: unknown ``type``.
        """
        kind = EVENT_TYPES.get(data.get("type", ""))
        if kind is None:
            raise ValueError(f"unknown event type {data.get('type')!r}")
        common: dict[str, Any] = {
            "source": SourceRef(**data["source"]),
            "event_id": data["event_id"],
            "occurred_at": datetime.fromisoformat(data["occurred_at"]),
        }
        return kind._from_body(data, common)

    @classmethod
    def _from_body(cls, data: dict[str, Any], common: dict[str, Any]) -> Event:
        return cls(**common)


@dataclass(frozen=True, kw_only=True, slots=True)
class AppointmentEvent(Event):
    """Base of the appointment events: each carries the appointment and its patient."""

    appointment: AppointmentInfo
    patient: PatientInfo

    def _body(self) -> dict[str, Any]:
        return {
            "appointment": self.appointment.marshal(),
            "patient": self.patient.marshal(),
            "result": None,
        }

    @classmethod
    def _from_body(cls, data: dict[str, Any], common: dict[str, Any]) -> Event:
        return cls(
            **common,
            appointment=AppointmentInfo.unmarshal(data["appointment"]),
            patient=PatientInfo.unmarshal(data["patient"]),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class AppointmentBooked(AppointmentEvent):
    """A new appointment was booked (SIU^S12, FHIR Appointment created as booked)."""

    type: ClassVar[str] = "appointment.booked"


@dataclass(frozen=True, kw_only=True, slots=True)
class AppointmentRescheduled(AppointmentEvent):
    """The appointment moved to a new time (SIU^S13, FHIR start changed)."""

    type: ClassVar[str] = "appointment.rescheduled"


@dataclass(frozen=True, kw_only=True, slots=True)
class AppointmentUpdated(AppointmentEvent):
    """Something other than the time changed (SIU^S14)."""

    type: ClassVar[str] = "appointment.updated"


@dataclass(frozen=True, kw_only=True, slots=True)
class AppointmentCancelled(AppointmentEvent):
    """The appointment was cancelled (SIU^S15, FHIR status cancelled)."""

    type: ClassVar[str] = "appointment.cancelled"


@dataclass(frozen=True, kw_only=True, slots=True)
class AppointmentDeleted(AppointmentEvent):
    """The appointment was deleted (SIU^S17, FHIR entered-in-error or DELETE)."""

    type: ClassVar[str] = "appointment.deleted"


@dataclass(frozen=True, kw_only=True, slots=True)
class AppointmentNoShow(AppointmentEvent):
    """The patient did not come (SIU^S26, FHIR status noshow)."""

    type: ClassVar[str] = "appointment.noshow"


@dataclass(frozen=True, kw_only=True, slots=True)
class LabResultAvailable(Event):
    """A result became final, corrected or amended; only ids travel, never content."""

    type: ClassVar[str] = "result.available"

    result: ResultInfo
    patient: PatientInfo

    def _body(self) -> dict[str, Any]:
        return {
            "appointment": None,
            "patient": self.patient.marshal(),
            "result": self.result.marshal(),
        }

    @classmethod
    def _from_body(cls, data: dict[str, Any], common: dict[str, Any]) -> Event:
        return cls(
            **common,
            result=ResultInfo.unmarshal(data["result"]),
            patient=PatientInfo.unmarshal(data["patient"]),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class PatientUpdated(Event):
    """Patient demographics changed (ADT^A04/A08/A31, FHIR Patient)."""

    type: ClassVar[str] = "patient.updated"

    patient: PatientInfo

    def _body(self) -> dict[str, Any]:
        return {"appointment": None, "patient": self.patient.marshal(), "result": None}

    @classmethod
    def _from_body(cls, data: dict[str, Any], common: dict[str, Any]) -> Event:
        return cls(**common, patient=PatientInfo.unmarshal(data["patient"]))


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplyReceived(Event):
    """A patient wrote to us or tapped a button.

    ``intent`` is one of confirm, cancel, reschedule, stop, start, help, slot, rating, unknown.
    ``token`` is the opaque reply token from a button payload, if any. ``text`` is PHI (free
    text): kept for staff, never logged. ``channel_user`` is the sender's E.164 phone or, when
    WhatsApp hides it, the business-scoped user id. ``context_id`` is the wamid replied to.
    """

    type: ClassVar[str] = "reply.received"

    message_id: str
    channel_user: str
    intent: str
    token: str | None = None
    choice: str | None = None
    text: str | None = None
    context_id: str | None = None
    message_type: str = "text"

    def _body(self) -> dict[str, Any]:
        return {
            "appointment": None,
            "patient": None,
            "result": None,
            "message_id": self.message_id,
            "channel_user": self.channel_user,
            "intent": self.intent,
            "token": self.token,
            "choice": self.choice,
            "text": self.text,
            "context_id": self.context_id,
            "message_type": self.message_type,
        }

    @classmethod
    def _from_body(cls, data: dict[str, Any], common: dict[str, Any]) -> Event:
        keys = (
            "message_id",
            "channel_user",
            "intent",
            "token",
            "choice",
            "text",
            "context_id",
            "message_type",
        )
        return cls(**common, **{k: data[k] for k in keys if k in data})


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusUpdated(Event):
    """The channel reported a delivery status for one of our messages.

    ``callback`` is ``biz_opaque_callback_data`` (our outbox id) when echoed.
    """

    type: ClassVar[str] = "status.updated"

    message_id: str
    status: str
    callback: str | None = None
    error_code: int | None = None
    recipient: str | None = None

    def _body(self) -> dict[str, Any]:
        return {
            "appointment": None,
            "patient": None,
            "result": None,
            "message_id": self.message_id,
            "status": self.status,
            "callback": self.callback,
            "error_code": self.error_code,
            "recipient": self.recipient,
        }

    @classmethod
    def _from_body(cls, data: dict[str, Any], common: dict[str, Any]) -> Event:
        keys = ("message_id", "status", "callback", "error_code", "recipient")
        return cls(**common, **{k: data[k] for k in keys if k in data})


@dataclass(frozen=True, kw_only=True, slots=True)
class TemplateStatusChanged(Event):
    """Meta approved, paused, disabled or re-categorised one of our templates."""

    type: ClassVar[str] = "template.status_changed"

    name: str
    language: str | None
    status: str
    reason: str | None = None

    def _body(self) -> dict[str, Any]:
        return {
            "appointment": None,
            "patient": None,
            "result": None,
            "name": self.name,
            "language": self.language,
            "status": self.status,
            "reason": self.reason,
        }

    @classmethod
    def _from_body(cls, data: dict[str, Any], common: dict[str, Any]) -> Event:
        return cls(
            **common,
            name=data["name"],
            language=data.get("language"),
            status=data["status"],
            reason=data.get("reason"),
        )


#: Every concrete event class by its ``type`` string, for :meth:`Event.unmarshal`.
EVENT_TYPES: dict[str, type[Event]] = {
    cls.type: cls
    for cls in (
        AppointmentBooked,
        AppointmentRescheduled,
        AppointmentUpdated,
        AppointmentCancelled,
        AppointmentDeleted,
        AppointmentNoShow,
        LabResultAvailable,
        PatientUpdated,
        ReplyReceived,
        StatusUpdated,
        TemplateStatusChanged,
    )
}
