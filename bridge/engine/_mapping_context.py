"""What a mapping may put in a message: the render context and the fields drawn from it.

A mapping names canonical fields (``patient.first_name``, ``appointment.date``...); this module
is the one list of those names, says which are sensitive, and turns a :class:`RenderContext`
into the cleaned, capped string for each. Values are PHI: errors raised here name the field and
the mapping, never the value.
"""

from __future__ import annotations

__all__ = [
    "ALWAYS_REFUSED",
    "DEFAULT_SENSITIVE",
    "FIELDS",
    "FieldSpec",
    "RenderContext",
    "is_sensitive",
    "resolve_field",
    "resolve_payload",
]

import fnmatch
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from bridge.domain import AppointmentInfo, FreeSlot, PatientInfo, ResultInfo
from bridge.engine.formatting import (
    DateStyle,
    clean_text,
    first_word,
    format_date,
    format_short_date,
    format_time,
    truncate,
)
from bridge.errors import MappingError


@dataclass(frozen=True, kw_only=True, slots=True)
class RenderContext:
    """Everything a message may be rendered from; the engine builds one per message.

    Attributes:
        patient: the recipient (only the first name may reach a message).
        appointment: the appointment concerned, if any.
        result: the result concerned, if any (never rendered: results notices carry no content).
        timezone: the clinic's IANA zone; dates and times are shown in it.
        portal_token: the signed URL-button suffix of a results notice.
        payloads: intent → button payload (``{"confirm": "confirm.AbC"}``), issued by the engine.
        slots: free slots offered for rescheduling.
        slot_payloads: the list-row id of each slot, same order as ``slots``.
    """

    patient: PatientInfo
    appointment: AppointmentInfo | None = None
    result: ResultInfo | None = None
    timezone: str = "UTC"
    portal_token: str | None = None
    payloads: Mapping[str, str] = field(default_factory=dict)
    slots: Sequence[FreeSlot] = ()
    slot_payloads: Sequence[str] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class FieldSpec:
    """One field a mapping may name.

    Attributes:
        name: dotted name used in mapping files.
        scope: ``message`` (anywhere) or ``slot`` (only in the rows of a slot list).
        cap: maximum rendered length.
        display: True when the value may be cut with ``…`` to fit ``cap`` and may have a
            fallback text; False when cutting would change its meaning (dates, tokens), so a
            value over ``cap`` or missing raises :class:`MappingError`.
    """

    name: str
    scope: Literal["message", "slot"] = "message"
    cap: int = 100
    display: bool = True


#: Every field a mapping may name. Caps are well under Meta's 1024 per body parameter so a
#: message stays readable on a phone; dates and times are never cut.
FIELDS: Mapping[str, FieldSpec] = {
    spec.name: spec
    for spec in (
        FieldSpec(name="patient.first_name", cap=40),
        FieldSpec(name="appointment.date", cap=80, display=False),
        FieldSpec(name="appointment.time", cap=40, display=False),
        FieldSpec(name="appointment.location", cap=100),
        FieldSpec(name="appointment.practitioner", cap=100),
        FieldSpec(name="appointment.service", cap=100),
        # reference whatsapp.md §1.2: a dynamic URL suffix; our tokens are far shorter.
        FieldSpec(name="portal.token", cap=2000, display=False),
        FieldSpec(name="slot.date", scope="slot", cap=80, display=False),
        FieldSpec(name="slot.date_short", scope="slot", cap=24, display=False),
        FieldSpec(name="slot.time", scope="slot", cap=40, display=False),
    )
}

#: Fields refused by default: names of services and departments (oncology, HIV clinic...),
#: reasons and diagnoses reveal health data to anyone who sees the phone's lock screen.
DEFAULT_SENSITIVE: frozenset[str] = frozenset(
    {
        "appointment.service",
        "appointment.department",
        "appointment.reason",
        "appointment.comment",
        "patient.diagnosis",
        "patient.*",
        "result.*",
    }
)

#: Refused even when a site allows them: result data never reaches a message (DESIGN.md §3).
ALWAYS_REFUSED: frozenset[str] = frozenset({"result.*"})

#: ``patient.*`` is sensitive as a family, but the first name is the one patient field every
#: reminder needs; it is allowed unless a site lists it explicitly.
_PATIENT_SAFE = frozenset({"patient.first_name"})


def _matches(name: str, patterns: Collection[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def is_sensitive(
    name: str, sensitive: Collection[str], allowed: Collection[str]
) -> Literal["always", "sensitive"] | None:
    """Whether a mapping may draw a parameter from field ``name``.

    Args:
        name: the dotted field name.
        sensitive: patterns (``result.*``) a site marks sensitive.
        allowed: exact names a site allows despite being sensitive.

    Returns:
        ``"always"`` for result data (refused whatever the site says), ``"sensitive"`` for a
        sensitive field the site did not allow, None when the field may be used.
    """
    if _matches(name, ALWAYS_REFUSED):
        return "always"
    if name in allowed:
        return None
    explicit = name in sensitive
    if name in _PATIENT_SAFE and not explicit:
        return None
    if explicit or _matches(name, sensitive):
        return "sensitive"
    return None


def _need_start(appointment: AppointmentInfo | None, name: str, where: str) -> datetime:
    if appointment is None:
        raise MappingError(where, f"{name} needs an appointment")
    if appointment.start is None:
        raise MappingError(where, f"{name} needs the appointment start")
    return appointment.start


def _raw_value(
    spec: FieldSpec, context: RenderContext, style: DateStyle, slot: FreeSlot | None, where: str
) -> str | None:
    name = spec.name
    appointment = context.appointment
    if name == "patient.first_name":
        return first_word(context.patient.given_name)
    if name == "appointment.date":
        return format_date(_need_start(appointment, name, where), context.timezone, style)
    if name == "appointment.time":
        return format_time(_need_start(appointment, name, where), context.timezone, style)
    if name in ("appointment.location", "appointment.practitioner", "appointment.service"):
        if appointment is None:
            raise MappingError(where, f"{name} needs an appointment")
        value: str | None = getattr(appointment, name.split(".", 1)[1])
        return value
    if name == "portal.token":
        return context.portal_token
    if slot is None:
        raise MappingError(where, f"{name} is only available in slot rows")
    if name == "slot.date":
        return format_date(slot.start, context.timezone, style)
    if name == "slot.date_short":
        return format_short_date(slot.start, context.timezone, style)
    if name == "slot.time":
        return format_time(slot.start, context.timezone, style)
    raise MappingError(where, f"unknown field {name}")


def resolve_field(
    name: str,
    context: RenderContext,
    *,
    style: DateStyle,
    fallbacks: Mapping[str, str],
    where: str,
    slot: FreeSlot | None = None,
) -> str:
    """The rendered, WhatsApp-safe value of field ``name``.

    Display values are cleaned (:func:`~bridge.engine.formatting.clean_text`), replaced by the
    mapping's fallback text when empty, and cut to the field's cap. ``portal.token`` is a
    contract: it is refused, never altered, when it is missing, holds whitespace or control
    characters, or is too long.

    Args:
        name: a key of :data:`FIELDS` (checked at load).
        context: the render context.
        style: the language's date style.
        fallbacks: field → text used when the value is missing (``patient.first_name`` →
            ``paciente``).
        where: ``language/kind.toml: key`` for errors.
        slot: the slot of the row being rendered, for ``slot.*`` fields.

    Raises:
        MappingError: the value is missing without fallback, or breaks its contract.
    """
    spec = FIELDS.get(name)
    if spec is None:
        raise MappingError(where, f"unknown field {name}")
    raw = _raw_value(spec, context, style, slot, where)
    if name == "portal.token":
        if not isinstance(raw, str) or not raw:
            raise MappingError(where, "portal.token is missing")
        if len(raw) > spec.cap or clean_text(raw) != raw or " " in raw:
            raise MappingError(where, "portal.token is not a plain URL suffix within limits")
        return raw
    value = clean_text(raw) if isinstance(raw, str) else ""
    if not value and spec.display:
        value = clean_text(fallbacks.get(name, ""))
    if not value:
        raise MappingError(where, f"{name} is missing and has no fallback")
    if len(value) > spec.cap:
        if not spec.display:
            raise MappingError(where, f"{name} renders longer than {spec.cap} characters")
        value = truncate(value, spec.cap)
    return value


def resolve_payload(key: str, context: RenderContext, *, limit: int, where: str) -> str:
    """The button payload / row id the engine issued for ``key``.

    Raises:
        MappingError: no payload for ``key``, or one that is empty, not a string or over
            ``limit`` (Meta would refuse the message; cutting it would break the reply token).
    """
    value = context.payloads.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MappingError(where, f"no payload for {key!r}")
    if len(value) > limit:
        raise MappingError(where, f"payload for {key!r} is longer than {limit}")
    return value
