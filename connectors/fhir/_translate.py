"""FHIR R4 resources and Bundles → canonical events, with Problems instead of exceptions.

Implements ../shared/reference/fhir.md §1.1 (Appointment), §1.4 (Patient), §1.6
(DiagnosticReport) and §2.1 (Backport notification Bundles), for ``bridge inspect fhir`` and
for the connector's notification, polling and fetch paths (one code path).

A resource alone cannot tell "booked" from "rescheduled", so the caller passes what the bridge
saw last of each appointment (``TranslateContext.previous``):

=========================================  ==========================
current Appointment                        event
=========================================  ==========================
status entered-in-error                    appointment.deleted
status cancelled                           appointment.cancelled
status noshow                              appointment.noshow
booked, nothing seen before                appointment.booked
booked, was proposed/pending/waitlist/...  appointment.booked
start changed                              appointment.rescheduled
anything else                              appointment.updated
=========================================  ==========================

The same terminal status seen again (a later version of a cancelled appointment) is an update,
so the patient is not told twice. DiagnosticReports give ``result.available`` for final,
amended and corrected, carrying ids and status only: never code, conclusion or values.
"""

from __future__ import annotations

__all__ = [
    "APPOINTMENT_STATUSES",
    "REPORT_STATUSES",
    "RESULT_STATUSES",
    "TranslateContext",
    "appointment_event_type",
    "decode",
    "translate_payload",
    "translate_resource",
]

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, tzinfo
from typing import Any

import orjson
from pydantic import ValidationError

from bridge.domain import (
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentDeleted,
    AppointmentEvent,
    AppointmentInfo,
    AppointmentNoShow,
    AppointmentRescheduled,
    AppointmentUpdated,
    Event,
    LabResultAvailable,
    PatientInfo,
    PatientUpdated,
    Problem,
    ResultInfo,
    SourceRef,
    Translation,
)

from ._notification import NotificationStatus, is_notification_bundle, parse_status
from ._patient import patient_info
from ._values import Ref, message_id, parse_datetime, parse_reference

#: Appointment.status codes (required binding, §1.1).
APPOINTMENT_STATUSES = frozenset(
    {
        "proposed",
        "pending",
        "booked",
        "arrived",
        "fulfilled",
        "cancelled",
        "noshow",
        "entered-in-error",
        "checked-in",
        "waitlist",
    }
)
#: DiagnosticReport.status codes (§1.6).
REPORT_STATUSES = frozenset(
    {
        "registered",
        "partial",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "appended",
        "cancelled",
        "entered-in-error",
        "unknown",
    }
)
#: Report statuses that tell the patient results are ready (decided by the lead).
RESULT_STATUSES = frozenset({"final", "amended", "corrected"})
#: Appointment statuses after which a "booked" is a new booking, not an update.
_NOT_YET_BOOKED = frozenset(
    {"proposed", "pending", "waitlist", "cancelled", "noshow", "entered-in-error"}
)
_CONNECTOR = "fhir"


@dataclass(frozen=True, kw_only=True, slots=True)
class TranslateContext:
    """What translation needs beyond the payload.

    Attributes:
        now: the current time (occurred_at fallback, expired telecom periods).
        system: the FHIR base URL, or ``fhir`` in inspect: ``AppointmentInfo.system``.
        region: default region for national phone numbers.
        tz: zone for date-times without an offset; None refuses to guess.
        known_topics: topic canonicals we subscribed to; None accepts any.
        previous: what the bridge saw last of an appointment, by logical id.
        patients: Patient resources fetched by the caller, by ``Patient/id``.
    """

    now: datetime
    system: str = "fhir"
    region: str | None = None
    tz: tzinfo | None = None
    known_topics: frozenset[str] | None = None
    previous: Callable[[str], AppointmentInfo | None] | None = None
    patients: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(slots=True)
class _Scope:
    """Resources a reference may point at: the Bundle's entries and a resource's contained."""

    by_url: dict[str, Mapping[str, Any]] = field(default_factory=dict)


@functools.cache
def _model(resource_type: str) -> Any:
    # imported lazily: pydantic model import cost grows with each model (fact sheet §5)
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return None


def _validation_problem(resource: Mapping[str, Any], exc: ValidationError) -> Problem:
    errors = exc.errors(include_input=False, include_url=False)
    where = [
        ".".join(str(p) for p in e.get("loc", ())) + f" ({e.get('type', '?')})" for e in errors[:3]
    ]
    more = f" and {len(errors) - 3} more" if len(errors) > 3 else ""
    return Problem(
        code="resource.invalid",
        field=str(resource.get("resourceType")),
        message=f"{_label(resource)} does not validate as FHIR R4: {'; '.join(where)}{more}",
        fatal=True,
    )


def _label(resource: Mapping[str, Any]) -> str:
    rid = resource.get("id")
    return (
        f"{resource.get('resourceType')}/{rid}"
        if isinstance(rid, str)
        else str(resource.get("resourceType"))
    )


def decode(payload: bytes) -> tuple[dict[str, Any] | None, Problem | None]:
    """Decode JSON bytes into a resource dict, or say why not (fatal Problem)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, Problem(code="payload.not_json", message="payload is not JSON", fatal=True)
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        return None, Problem(
            code="payload.not_resource",
            message="payload is not a FHIR resource (no resourceType)",
            fatal=True,
        )
    return data, None


def validate(resource: Mapping[str, Any]) -> Problem | None:
    """Validate ``resource`` with the R4B model of its type; a Problem when it fails."""
    model = _model(str(resource.get("resourceType")))
    if model is None:
        return Problem(
            code="resource.unknown_type",
            field="resourceType",
            message=f"{str(resource.get('resourceType'))[:64]!r} is not a FHIR R4 resource type",
            fatal=True,
        )
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        return _validation_problem(resource, exc)
    return None


def appointment_event_type(
    info: AppointmentInfo, previous: AppointmentInfo | None
) -> type[AppointmentEvent]:
    """Which canonical event a new version of an appointment is (see the module table)."""
    terminal: dict[str, type[AppointmentEvent]] = {
        "entered-in-error": AppointmentDeleted,
        "cancelled": AppointmentCancelled,
        "noshow": AppointmentNoShow,
    }
    if info.status in terminal:
        if previous is not None and previous.status == info.status:
            return AppointmentUpdated
        return terminal[info.status]
    if previous is None:
        return AppointmentBooked if info.status == "booked" else AppointmentUpdated
    if info.status == "booked" and previous.status in _NOT_YET_BOOKED:
        return AppointmentBooked
    if previous.start != info.start:
        return AppointmentRescheduled
    return AppointmentUpdated


def _resolve(
    reference: Any, resource: Mapping[str, Any], scope: _Scope, ctx: TranslateContext
) -> tuple[Ref | None, Mapping[str, Any] | None, Problem | None]:
    """Resolve a Reference element: (parsed ref, resource when at hand, problem if broken)."""
    if not isinstance(reference, Mapping):
        return None, None, None
    value = reference.get("reference")
    if value is None:
        return None, None, None  # display-only actor: nothing to resolve
    if isinstance(value, str) and value.startswith("#"):
        for contained in resource.get("contained", []) or []:
            if isinstance(contained, Mapping) and contained.get("id") == value[1:]:
                ref = Ref(type=str(contained.get("resourceType")), id=value[1:])
                return ref, contained, None
        return None, None, _broken(resource, "contained resource not found")
    if isinstance(value, str) and value.startswith("urn:"):
        target = scope.by_url.get(value)
        if target is None:
            return None, None, _broken(resource, "urn reference has no Bundle entry")
        return (
            Ref(type=str(target.get("resourceType")), id=str(target.get("id") or "")),
            target,
            None,
        )
    parsed = parse_reference(value)
    if parsed is None:
        return None, None, _broken(resource, "reference is not Type/id or an absolute URL")
    target = (
        scope.by_url.get(value)
        or scope.by_url.get(parsed.relative)
        or ctx.patients.get(parsed.relative)
    )
    return parsed, target, None


def _broken(resource: Mapping[str, Any], why: str) -> Problem:
    return Problem(
        code="reference.broken",
        field=f"{resource.get('resourceType')}.reference",
        message=f"{_label(resource)}: {why}",
    )


def _display(concepts: Any) -> str | None:
    if not isinstance(concepts, list):
        return None
    for concept in concepts:
        if not isinstance(concept, Mapping):
            continue
        if isinstance(concept.get("text"), str):
            return str(concept["text"])
        for coding in concept.get("coding", []):
            if isinstance(coding, Mapping) and isinstance(coding.get("display"), str):
                return str(coding["display"])
    return None


def _patient(
    reference: Any, owner: Mapping[str, Any], scope: _Scope, ctx: TranslateContext
) -> tuple[PatientInfo | None, list[Problem]]:
    ref, target, problem = _resolve(reference, owner, scope, ctx)
    if problem is not None:
        return None, [problem]
    if ref is None or ref.type != "Patient":
        return None, []
    if target is None:
        return PatientInfo(id=ref.id), [
            Problem(
                code="patient.not_included",
                field="Patient",
                message=f"Patient/{ref.id} is not in the payload: phone and language unknown "
                "(the connector reads it from the server)",
            )
        ]
    invalid = validate(target)
    if invalid is not None:
        return PatientInfo(id=ref.id), [replace(invalid, fatal=False)]
    info, problems = patient_info(target, region=ctx.region, now=ctx.now)
    if not info.id:
        info = replace(info, id=ref.id)
    return info, problems


def _occurred(resource: Mapping[str, Any], ctx: TranslateContext) -> datetime:
    meta = resource.get("meta")
    when = parse_datetime(meta.get("lastUpdated"), None) if isinstance(meta, Mapping) else None
    return when or ctx.now


def _version(resource: Mapping[str, Any]) -> str | None:
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, Mapping) else None
    return str(version) if version else None


def _time(
    resource: Mapping[str, Any], name: str, ctx: TranslateContext, problems: list[Problem]
) -> datetime | None:
    raw = resource.get(name)
    if raw is None:
        return None
    value = parse_datetime(raw, ctx.tz)
    if value is None:
        problems.append(
            Problem(
                code="time.unreadable",
                field=f"{resource.get('resourceType')}.{name}",
                message=f"{_label(resource)}.{name} has no UTC offset and no time zone is "
                "configured, or is not a date-time",
            )
        )
    return value


def _appointment(
    resource: Mapping[str, Any], scope: _Scope, ctx: TranslateContext
) -> tuple[list[Event], list[Problem]]:
    problems: list[Problem] = []
    status = resource.get("status")
    rid = resource.get("id")
    if status not in APPOINTMENT_STATUSES:
        return [], [
            Problem(
                code="appointment.status_unknown",
                field="Appointment.status",
                message=f"{_label(resource)}: status {str(status)[:32]!r} is not an R4 code",
                fatal=True,
            )
        ]
    if not isinstance(rid, str) or not rid:
        return [], [
            Problem(
                code="appointment.no_id",
                field="Appointment.id",
                message="Appointment has no id: it cannot be tracked or written back",
                fatal=True,
            )
        ]
    start = _time(resource, "start", ctx, problems)
    end = _time(resource, "end", ctx, problems)
    patient: PatientInfo | None = None
    location = practitioner = None
    for participant in resource.get("participant", []) or []:
        if not isinstance(participant, Mapping):
            continue
        actor = participant.get("actor")
        ref, _, problem = _resolve(actor, resource, scope, ctx)
        if problem is not None:
            problems.append(problem)
            continue
        kind = ref.type if ref is not None else None
        display = actor.get("display") if isinstance(actor, Mapping) else None
        if kind == "Patient" and patient is None:
            patient, found = _patient(actor, resource, scope, ctx)
            problems.extend(found)
        elif kind == "Location" and location is None and isinstance(display, str):
            location = display
        elif kind in ("Practitioner", "PractitionerRole") and practitioner is None:
            practitioner = display if isinstance(display, str) else None
    if patient is None:
        problems.append(
            Problem(
                code="appointment.no_patient",
                field="Appointment.participant",
                message=f"{_label(resource)} has no Patient participant: nobody to message",
            )
        )
        return [], problems
    info = AppointmentInfo(
        id=rid,
        status=str(status),
        start=start,
        end=end,
        system=ctx.system,
        version=_version(resource),
        location=location,
        practitioner=practitioner,
        service=_display(resource.get("serviceType")),
    )
    previous = ctx.previous(rid) if ctx.previous is not None else None
    kind_of_event = appointment_event_type(info, previous)
    source = SourceRef(connector=_CONNECTOR, message_id=message_id(resource))
    event = kind_of_event(
        source=source, occurred_at=_occurred(resource, ctx), appointment=info, patient=patient
    )
    return [event], problems


def _report(
    resource: Mapping[str, Any], scope: _Scope, ctx: TranslateContext
) -> tuple[list[Event], list[Problem]]:
    status = resource.get("status")
    rid = resource.get("id")
    if status not in REPORT_STATUSES:
        return [], [
            Problem(
                code="result.status_unknown",
                field="DiagnosticReport.status",
                message=f"{_label(resource)}: status {str(status)[:32]!r} is not an R4 code",
                fatal=True,
            )
        ]
    if status not in RESULT_STATUSES:
        return [], [
            Problem(
                code="result.not_final",
                field="DiagnosticReport.status",
                message=f"{_label(resource)} is {status}: patients hear only of final, amended "
                "or corrected results",
            )
        ]
    if not isinstance(rid, str) or not rid:
        return [], [
            Problem(
                code="result.no_id",
                field="DiagnosticReport.id",
                message="DiagnosticReport has no id",
                fatal=True,
            )
        ]
    patient, problems = _patient(resource.get("subject"), resource, scope, ctx)
    if patient is None:
        problems.append(
            Problem(
                code="result.no_patient",
                field="DiagnosticReport.subject",
                message=f"{_label(resource)}: subject is not a Patient",
            )
        )
        return [], problems
    result = ResultInfo(
        id=rid,
        status=str(status),
        system=ctx.system,
        issued=parse_datetime(resource.get("issued"), ctx.tz),
    )
    event = LabResultAvailable(
        source=SourceRef(connector=_CONNECTOR, message_id=message_id(resource)),
        occurred_at=_occurred(resource, ctx),
        result=result,
        patient=patient,
    )
    return [event], problems


def _patient_resource(
    resource: Mapping[str, Any], ctx: TranslateContext
) -> tuple[list[Event], list[Problem]]:
    info, problems = patient_info(resource, region=ctx.region, now=ctx.now)
    if not info.id:
        return [], [
            Problem(
                code="patient.no_id", field="Patient.id", message="Patient has no id", fatal=True
            )
        ]
    event = PatientUpdated(
        source=SourceRef(connector=_CONNECTOR, message_id=message_id(resource)),
        occurred_at=_occurred(resource, ctx),
        patient=info,
    )
    return [event], problems


def translate_resource(
    resource: Mapping[str, Any], ctx: TranslateContext, *, _scope: _Scope | None = None
) -> Translation:
    """Translate one decoded resource; never raises for bad content.

    Args:
        resource: the resource as decoded JSON.
        ctx: see :class:`TranslateContext`.

    Returns:
        Events and problems; ``message_id`` is ``Type/id/_history/vid`` (or ``Type/id``).
    """
    rtype = resource.get("resourceType")
    if rtype == "Bundle":
        return _bundle(resource, ctx)
    resource, notes = _with_offsets(resource, ctx)
    invalid = validate(resource)
    if invalid is not None:
        return Translation(problems=(invalid,), message_id=message_id(resource))
    scope = _scope or _Scope()
    events: list[Event] = []
    problems: list[Problem] = []
    if rtype == "Appointment":
        events, problems = _appointment(resource, scope, ctx)
    elif rtype == "DiagnosticReport":
        events, problems = _report(resource, scope, ctx)
    elif rtype == "Patient":
        events, problems = _patient_resource(resource, ctx)
    elif rtype in ("Parameters", "SubscriptionStatus") and (status := parse_status(resource)):
        problems = _status_notes(status, ctx, standalone=True)
    else:
        problems = [
            Problem(
                code="resource.ignored",
                field=str(rtype),
                message=f"{_label(resource)}: the bridge acts on Appointment, Patient and "
                "DiagnosticReport only",
            )
        ]
    return Translation(
        events=tuple(events), problems=(*notes, *problems), message_id=message_id(resource)
    )


#: instant elements the bridge reads; some servers send them without an offset.
_INSTANTS = {"Appointment": ("start", "end"), "DiagnosticReport": ("issued",)}


def _with_offsets(
    resource: Mapping[str, Any], ctx: TranslateContext
) -> tuple[Mapping[str, Any], list[Problem]]:
    """Give offset-less instants the configured zone (DESIGN.md §4), saying so in a note.

    Without a zone the resource is left alone and fails validation: the bridge never guesses.
    """
    names = _INSTANTS.get(str(resource.get("resourceType")), ())
    if ctx.tz is None or not names:
        return resource, []
    fixed = dict(resource)
    notes = []
    for name in names:
        raw = resource.get(name)
        value = parse_datetime(raw, None) if isinstance(raw, str) else None
        if isinstance(raw, str) and "T" in raw and value is None:
            local = parse_datetime(raw, ctx.tz)
            if local is not None:
                fixed[name] = local.isoformat()
                notes.append(
                    Problem(
                        code="time.no_offset",
                        field=f"{resource.get('resourceType')}.{name}",
                        message=f"{name} had no UTC offset; read in the configured zone",
                    )
                )
    return fixed, notes


def _index(bundle: Mapping[str, Any]) -> _Scope:
    scope = _Scope()
    for entry in bundle.get("entry", []) or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("resource"), Mapping):
            continue
        resource = entry["resource"]
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            scope.by_url[full_url] = resource
        rid = resource.get("id")
        if isinstance(rid, str):
            scope.by_url.setdefault(f"{resource.get('resourceType')}/{rid}", resource)
    return scope


def _nested(translation: Translation, where: str) -> Translation:
    # one bad entry does not make the whole Bundle unreadable: not fatal at Bundle level
    problems = tuple(
        replace(p, fatal=False, field=f"{where}.{p.field}" if p.field else where)
        for p in translation.problems
    )
    return replace(translation, problems=problems)


def _bundle(bundle: Mapping[str, Any], ctx: TranslateContext) -> Translation:
    bundle_id = bundle.get("id")
    label = f"Bundle/{bundle_id}" if isinstance(bundle_id, str) else "Bundle"
    entries = bundle.get("entry", [])
    if not isinstance(entries, list) or not isinstance(bundle.get("type"), str):
        return Translation(
            problems=(
                Problem(
                    code="bundle.invalid",
                    field="Bundle",
                    message=f"{label} has no type or its entries are not a list",
                    fatal=True,
                ),
            ),
            message_id=label,
        )
    status = is_notification_bundle(bundle)
    if status is not None:
        return _notification(bundle, status, ctx, label)
    scope = _index(bundle)
    events: list[Event] = []
    problems: list[Problem] = []
    for index, entry in enumerate(entries):
        where = f"Bundle.entry[{index}]"
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            if bundle.get("type") not in ("transaction-response", "batch-response", "history"):
                problems.append(
                    Problem(code="bundle.entry_empty", field=where, message="entry has no resource")
                )
            continue
        if resource.get("resourceType") == "OperationOutcome":
            problems.extend(_outcome_notes(resource, where))
            continue
        found = _nested(translate_resource(resource, ctx, _scope=scope), where)
        events.extend(found.events)
        problems.extend(found.problems)
    return Translation(events=tuple(events), problems=tuple(problems), message_id=label)


def _outcome_notes(outcome: Mapping[str, Any], where: str) -> list[Problem]:
    notes = []
    for issue in outcome.get("issue", []) or []:
        if isinstance(issue, Mapping):
            notes.append(
                Problem(
                    code="bundle.outcome",
                    field=where,
                    message=f"server says {str(issue.get('severity'))[:16]}: "
                    f"{str(issue.get('code'))[:32]}",
                )
            )
    return notes


def _status_notes(
    status: NotificationStatus, ctx: TranslateContext, *, standalone: bool = False
) -> list[Problem]:
    sub = status.subscription_id or "?"
    counter = status.events_since_start
    notes: list[Problem] = []
    if ctx.known_topics is not None and status.topic not in ctx.known_topics:
        notes.append(
            Problem(
                code="notification.unknown_topic",
                field="SubscriptionStatus.topic",
                message=f"Subscription/{sub}: topic {str(status.topic)[:200]} is not one we "
                "subscribed to",
                fatal=True,
            )
        )
    if status.type == "handshake":
        notes.append(
            Problem(
                code="notification.handshake",
                message=f"handshake for Subscription/{sub} (status {status.status}): "
                "acknowledged with 2xx, nothing to fetch",
            )
        )
    elif status.type == "heartbeat":
        notes.append(
            Problem(
                code="notification.heartbeat",
                message=f"heartbeat for Subscription/{sub}, events since start {counter}: "
                "a counter above the last event seen triggers a resync by polling",
            )
        )
    elif status.type in ("query-status", "query-event") or standalone:
        notes.append(
            Problem(
                code="notification.status",
                message=f"{status.type} for Subscription/{sub} (status {status.status}), "
                f"events since start {counter}",
            )
        )
    elif status.type != "event-notification":
        notes.append(
            Problem(
                code="notification.no_type",
                field="SubscriptionStatus.type",
                message=f"notification type {status.type[:32]!r} is not a backport type",
                fatal=True,
            )
        )
    if status.status == "error" or status.errors:
        notes.append(
            Problem(
                code="notification.error",
                message=f"Subscription/{sub} reports status {status.status}, errors "
                f"{', '.join(status.errors) or 'none'}: the connector resyncs by polling",
            )
        )
    return notes


def _focus_key(focus: str) -> tuple[str, str] | None:
    ref = parse_reference(focus)
    return (ref.type, ref.id) if ref is not None else None


def _notification(
    bundle: Mapping[str, Any], status: NotificationStatus, ctx: TranslateContext, label: str
) -> Translation:
    problems = _status_notes(status, ctx)
    events: list[Event] = []
    if status.type != "event-notification":
        return Translation(problems=tuple(problems), message_id=label)
    entries = [e for e in bundle.get("entry", [])[1:] if isinstance(e, Mapping)]
    scope = _index({"entry": entries})
    included: set[tuple[str, str]] = set()
    for index, entry in enumerate(entries, start=1):
        resource = entry.get("resource")
        if not isinstance(resource, Mapping):
            continue
        included.add((str(resource.get("resourceType")), str(resource.get("id"))))
        found = _nested(translate_resource(resource, ctx, _scope=scope), f"Bundle.entry[{index}]")
        events.extend(found.events)
        problems.extend(found.problems)
    focused = [e for e in status.events if e.focus]
    for event in focused:
        key = _focus_key(event.focus or "")
        if key is None:
            problems.append(
                Problem(
                    code="reference.broken",
                    field="notification-event.focus",
                    message=f"event {event.number}: focus is not a resource reference",
                )
            )
        elif key not in included:
            problems.append(
                Problem(
                    code="notification.fetch",
                    field="notification-event.focus",
                    message=f"event {event.number}: id-only, the connector fetches "
                    f"{key[0]}/{key[1]}",
                )
            )
    if not focused and not included:
        problems.append(
            Problem(
                code="notification.empty",
                message="event-notification without focus (empty payload): the connector "
                "resyncs by polling",
            )
        )
    return Translation(events=tuple(events), problems=tuple(problems), message_id=label)


def translate_payload(payload: bytes, ctx: TranslateContext) -> Translation:
    """Translate raw bytes (a resource or a Bundle of any kind); never raises for bad content."""
    resource, problem = decode(payload)
    if resource is None:
        return Translation(problems=(problem,) if problem is not None else ())
    return translate_resource(resource, ctx)
