"""HL7 v2 SIU / ORU / ADT messages to canonical events (reference ``hl7v2.md`` §1, §3, §4).

One raw payload in, one :class:`bridge.domain.Translation` out, never an exception. Example of
what is read from an SIU (trimmed)::

    MSH|^~\\&|SCHApp|GHH|EHRApp|GHH|202109141120+0215||SIU^S12^SIU_S12|MSG00012|P|2.8
    SCH|12345|36996|...||Booked              <- SCH-2.1 (else SCH-1.1) = appointment id
    TQ1|||||||20210924093000+0215|20210924102000+0215   <- start / end
    PID|1||PATID1234^5^M11^...^MR||EVERYMAN^ADAM|...|78788788^^CP|...
    AIS|001|A|76164006^Biopsy of colon^SCT|...           <- service text
    AIL|001||055^Room01^^GH Clinic                        <- location
    AIP|001||1210^GE^Robert^C                             <- practitioner

Rules (each configurable per interface through :class:`TranslateConfig`):

- The trigger event (MSH-9.2) drives state: S12 booked, S13 rescheduled, S14 updated, S15
  cancelled, S16 (discontinued) cancelled, S17 deleted, S26 no-show. SCH-25 is advisory, read
  through a case-insensitive vendor map; for S14 it sets the status.
- start = TQ1-7 ▸ SCH-11.4 ▸ first AIS-4 / AIL-6 / AIP-6 / AIG-8; end = TQ1-8 ▸ SCH-11.5 ▸
  start + duration (SCH-9/10 ▸ TQ1-13 ▸ SCH-11.3 ▸ AIS-7/8). Times without an offset get the
  interface's zone.
- ORU^R01: one ``result.available`` per filler order (OBR-3, else ORC-3) once final: OBR-25 F
  or C, or, when OBR-25 is blank, every OBX-11 F or C. No test names, values or notes are read.
- ADT^A04/A08/A31: ``patient.updated``.
- Privacy: PID-29/30 death, PD1-12 protection ``Y``, PD1-11 publicity ``N``/``F``, PV1-16 VIP,
  ARV (v2.6+) → ``contact_allowed = False`` with a reason code.
- Fatal (quarantine): not HL7, unreadable header, bytes invalid in the declared charset,
  unknown version, unsupported message type. Business-check failures are non-fatal problems.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_STATUS_MAP",
    "FHIR_APPOINTMENT_STATUSES",
    "FieldRef",
    "Header",
    "TranslateConfig",
    "read_header",
    "translate",
    "translate_frame",
]

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

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
from connectors.hl7v2._patient import build_patient
from connectors.hl7v2._segments import (
    Message,
    Segment,
    Separators,
    normalise,
    parse_message,
    separators_of,
)
from connectors.hl7v2._time import parse_dtm, parse_duration

CONNECTOR = "hl7v2"

#: the statuses AppointmentInfo.status may take (FHIR Appointment.status)
FHIR_APPOINTMENT_STATUSES = frozenset(
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

#: table 0278 words and the vendor spellings seen in the corpus; keys are lower case
DEFAULT_STATUS_MAP: Mapping[str, str] = {
    "booked": "booked",
    "confirmed": "booked",
    "scheduled": "booked",
    "overbook": "booked",
    "pending": "pending",
    "waitlist": "waitlist",
    "started": "arrived",
    "complete": "fulfilled",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "dc": "cancelled",
    "deleted": "entered-in-error",
    "noshow": "noshow",
}

#: MSH-18 names (table 0211 and common variants) to Python codecs; keys are upper case
_CHARSETS: Mapping[str, str] = {
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "latin-1",
    "8859/15": "iso8859-15",
    "8859/2": "iso8859-2",
    "8859/5": "iso8859-5",
    "8859/7": "iso8859-7",
    "8859/9": "iso8859-9",
    "ISO-8859-1": "latin-1",
    "ISO_IR 100": "latin-1",
    "ISO_IR 192": "utf-8",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}

#: versions we read (MSH-12.1)
SUPPORTED_VERSIONS = frozenset(
    {
        "2.1",
        "2.2",
        "2.3",
        "2.3.1",
        "2.4",
        "2.5",
        "2.5.1",
        "2.6",
        "2.7",
        "2.7.1",
        "2.8",
        "2.8.1",
        "2.8.2",
    }
)

_SIU_EVENTS: Mapping[str, tuple[type[AppointmentEvent], str]] = {
    "S12": (AppointmentBooked, "booked"),
    "S13": (AppointmentRescheduled, "booked"),
    "S14": (AppointmentUpdated, "booked"),
    "S15": (AppointmentCancelled, "cancelled"),
    "S16": (AppointmentCancelled, "cancelled"),
    "S17": (AppointmentDeleted, "entered-in-error"),
    "S26": (AppointmentNoShow, "noshow"),
}
_ADT_EVENTS = frozenset({"A04", "A08", "A31"})
_RESULT_STATUS = {"F": "final", "C": "corrected"}

_FIELD_REF = re.compile(r"([A-Z][A-Z0-9]{2})-(\d{1,3})(?:\.(\d{1,2}))?")


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A place in a message, ``SCH-2.1``: segment, field, component."""

    segment: str
    field: int
    component: int = 1

    @classmethod
    def parse(cls, text: str) -> FieldRef:
        """Read ``SEG-F`` or ``SEG-F.C``.

        Raises:
            ValueError: not of that form.
        """
        m = _FIELD_REF.fullmatch(text.strip().upper())
        if m is None:
            raise ValueError(f"{text!r} is not a field reference like SCH-2.1")
        return cls(m.group(1), int(m.group(2)), int(m.group(3) or 1))

    def __str__(self) -> str:
        return f"{self.segment}-{self.field}.{self.component}"


@dataclass(frozen=True, kw_only=True, slots=True)
class TranslateConfig:
    """Per-interface translation rules.

    Attributes:
        timezone: zone for times written without an offset.
        phone_region: ISO 3166 region for numbers without a country code (None: such numbers
            are invalid).
        encoding: Python codec used when MSH-18 is empty or unknown; bytes it cannot decode
            fall back to Latin-1 (with a problem), so Latin-1 feeds survive a UTF-8 default.
        appointment_id: where the appointment id is read, first non-empty wins.
        status_map: vendor SCH-25 code (lower case) → FHIR status; extends the defaults.
        language_map: PID-15 code (upper case) → language code; extends the defaults.
        patient_id_type: prefer the PID-3 repetition with this CX-5 type code (``MR``).
        system: namespace written into appointment and result ids.
    """

    timezone: tzinfo = UTC
    phone_region: str | None = None
    encoding: str = "utf-8"
    appointment_id: tuple[FieldRef, ...] = (FieldRef("SCH", 2), FieldRef("SCH", 1))
    status_map: Mapping[str, str] = field(default_factory=dict)
    language_map: Mapping[str, str] = field(default_factory=dict)
    patient_id_type: str | None = None
    system: str = CONNECTOR


@dataclass(frozen=True, kw_only=True, slots=True)
class Header:
    """The MSH fields the listener needs to answer (raw, still escaped, except ids)."""

    seps: Separators
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str
    event: str
    control_id: str
    processing_id: str
    version: str
    accept_ack_type: str
    application_ack_type: str

    @property
    def sender(self) -> str:
        """``MSH-3^MSH-4`` as written (the dedupe namespace)."""
        return f"{self.sending_application}^{self.sending_facility}"


def _fatal(code: str, message: str, where: str | None = None) -> Problem:
    return Problem(code=code, message=message, field=where, fatal=True)


def _problem(code: str, message: str, where: str | None = None) -> Problem:
    return Problem(code=code, message=message, field=where)


def header_of(msh: Segment) -> Header:
    """Read the answer-relevant MSH fields."""
    return Header(
        seps=msh.seps,
        sending_application=msh.raw(3),
        sending_facility=msh.raw(4),
        receiving_application=msh.raw(5),
        receiving_facility=msh.raw(6),
        message_type=msh.get(9, 1).strip().upper(),
        event=msh.get(9, 2).strip().upper(),
        control_id=msh.text(10).split(msh.seps.component)[0].strip(),
        processing_id=msh.raw(11),
        version=msh.get(12, 1).strip(),
        accept_ack_type=msh.raw(15).strip().upper(),
        application_ack_type=msh.raw(16).strip().upper(),
    )


def read_header(payload: bytes) -> Header | None:
    """The MSH of a raw payload (or of the first message of a batch), None when unreadable.

    Cheap: only the MSH line is decoded (as Latin-1) and split.
    """
    data = normalise(payload[:65536])
    line = _first_line(data, b"MSH")
    if line is None:
        return None
    try:
        return header_of(parse_message(line.decode("latin-1")).segments[0])
    except ValueError:
        return None


def _first_line(data: bytes, name: bytes) -> bytes | None:
    if data.startswith(name):
        end = data.find(b"\r")
        return data if end < 0 else data[:end]
    at = data.find(b"\r" + name)
    if at < 0:
        return None
    end = data.find(b"\r", at + 1)
    return data[at + 1 :] if end < 0 else data[at + 1 : end]


def _decode(data: bytes, config: TranslateConfig, problems: list[Problem]) -> str | None:
    msh = _first_line(data, b"MSH") or b""
    declared = ""
    try:
        seps = separators_of(msh.decode("latin-1"))
        parts = msh.decode("latin-1").split(seps.field)
        declared = (
            parts[17].split(seps.repetition)[0].split(seps.component)[0].strip()
            if len(parts) > 17
            else ""
        )
    except ValueError:
        pass
    codec = config.encoding
    if declared:
        known = _CHARSETS.get(declared.upper())
        if known is None:
            problems.append(
                _problem(
                    "charset.unknown",
                    "MSH-18 names an unknown character set; default used",
                    "MSH-18",
                )
            )
        else:
            try:
                return data.decode(known)
            except UnicodeDecodeError:
                problems.append(
                    _fatal(
                        "charset.invalid",
                        "bytes are invalid in the character set MSH-18 declares",
                        "MSH-18",
                    )
                )
                return None
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        problems.append(
            _problem("charset.fallback", f"bytes are not valid {codec}; read as Latin-1", "MSH-18")
        )
        return data.decode("latin-1")


def translate_frame(payload: bytes, config: TranslateConfig) -> tuple[Translation, Header | None]:
    """Translate one raw payload and return the header the answer needs.

    The header is None when no MSH could be read. Never raises for bad content.
    """
    try:
        return _translate_frame(payload, config)
    except Exception as exc:  # noqa: BLE001 - bad input must become a Problem, never a crash
        reason = f"internal translation error ({type(exc).__name__})"
        return Translation(problems=(_fatal("message.unreadable", reason),)), None


def translate(payload: bytes, config: TranslateConfig | None = None) -> Translation:
    """Translate one raw HL7 v2 payload (a message, an MLLP frame or a batch file).

    Args:
        payload: the bytes as received or read from a file (binary: ``\\r`` matters).
        config: the interface's rules; defaults apply when None.

    Returns:
        events and problems; a fatal problem means the payload must be quarantined.
    """
    return translate_frame(payload, config or TranslateConfig())[0]


def _translate_frame(payload: bytes, config: TranslateConfig) -> tuple[Translation, Header | None]:
    data = normalise(payload)
    if not data:
        return Translation(problems=(_fatal("message.empty", "the payload is empty"),)), None
    if not data.startswith((b"MSH", b"BHS", b"FHS")):
        return Translation(
            problems=(_fatal("message.not_hl7", "the payload does not start with MSH"),)
        ), None
    problems: list[Problem] = []
    if data.isascii():
        # the common case: no charset question, one split serves header and body
        return _translate_text(data.decode("ascii"), config, problems)
    text = _decode(data, config, problems)
    header: Header | None = None
    msh_line = _first_line(data, b"MSH")
    if msh_line is not None:
        try:
            header = header_of(parse_message(msh_line.decode("latin-1")).segments[0])
        except ValueError:
            header = None
    if header is None:
        problems.append(
            _fatal("message.unreadable_header", "the MSH segment cannot be read", "MSH")
        )
        return Translation(problems=tuple(problems)), None
    if text is None:
        return Translation(problems=tuple(problems), message_id=header.control_id or None), header
    try:
        message = parse_message(text)
    except ValueError:
        problems.append(
            _fatal("message.unreadable_header", "the MSH segment cannot be read", "MSH")
        )
        return Translation(problems=tuple(problems), message_id=header.control_id or None), header
    if message.segments[0].name in ("BHS", "FHS"):
        return _translate_batch(message, config, problems), header
    events, message_id = _translate_one(message, config, problems)
    return Translation(
        events=tuple(events), problems=tuple(problems), message_id=message_id
    ), header


def _translate_text(
    text: str, config: TranslateConfig, problems: list[Problem]
) -> tuple[Translation, Header | None]:
    try:
        message = parse_message(text)
    except ValueError:
        message = None
    msh = message.first("MSH") if message is not None else None
    if message is None or msh is None:
        problems.append(
            _fatal("message.unreadable_header", "the MSH segment cannot be read", "MSH")
        )
        return Translation(problems=tuple(problems)), None
    header = header_of(msh)
    if message.segments[0].name in ("BHS", "FHS"):
        return _translate_batch(message, config, problems), header
    events, message_id = _translate_one(message, config, problems, header)
    return Translation(
        events=tuple(events), problems=tuple(problems), message_id=message_id
    ), header


def _translate_batch(
    message: Message, config: TranslateConfig, problems: list[Problem]
) -> Translation:
    """A BHS/FHS batch: every MSH inside is translated; the batch id is BHS-11."""
    groups: list[list[Segment]] = []
    batch_id = ""
    for seg in message.segments:
        if seg.name == "BHS" and not batch_id:
            batch_id = seg.text(11)
        if seg.name == "MSH":
            groups.append([seg])
        elif groups and seg.name not in ("BTS", "FTS", "BHS", "FHS"):
            groups[-1].append(seg)
    if not groups:
        problems.append(_fatal("batch.empty", "the batch holds no MSH segment", "BHS"))
        return Translation(problems=tuple(problems), message_id=batch_id or None)
    events: list[Event] = []
    first_id: str | None = None
    for group in groups:
        got, mid = _translate_one(Message(group, message.seps), config, problems)
        events.extend(got)
        first_id = first_id or mid
    return Translation(
        events=tuple(events), problems=tuple(problems), message_id=batch_id or first_id
    )


def _translate_one(
    message: Message, config: TranslateConfig, problems: list[Problem], head: Header | None = None
) -> tuple[list[Event], str | None]:
    msh = message.segments[0]
    head = head or header_of(msh)
    message_id = head.control_id or None
    if not head.control_id:
        problems.append(_problem("message.no_control_id", "MSH-10 is empty", "MSH-10"))
    if head.version not in SUPPORTED_VERSIONS:
        problems.append(
            _fatal("version.unsupported", "MSH-12 names a version we do not read", "MSH-12")
        )
        return [], message_id
    source = SourceRef(connector=CONNECTOR, message_id=head.control_id)
    occurred = _occurred(msh, config)
    kind = head.message_type
    if kind == "SIU":
        spec = _SIU_EVENTS.get(head.event)
        if spec is None:
            problems.append(
                _problem("event.unsupported", "SIU trigger event not used; ignored", "MSH-9")
            )
            return [], message_id
        event = _siu(message, spec, source, occurred, config, problems)
        return ([event] if event is not None else []), message_id
    if kind == "ORU" and head.event == "R01":
        return _oru(message, source, occurred, config, problems), message_id
    if kind == "ADT":
        if head.event not in _ADT_EVENTS:
            problems.append(
                _problem("event.unsupported", "ADT trigger event not used; ignored", "MSH-9")
            )
            return [], message_id
        pid = message.first("PID")
        patient = _patient(message, pid, config, problems) if pid is not None else None
        if pid is None:
            problems.append(_problem("patient.missing", "no PID segment", "PID"))
        if patient is None:
            return [], message_id
        when = occurred or datetime.now(UTC)
        return [PatientUpdated(source=source, patient=patient, occurred_at=when)], message_id
    problems.append(_fatal("message.unsupported_type", "message type not supported", "MSH-9"))
    return [], message_id


def _occurred(msh: Segment, config: TranslateConfig) -> datetime | None:
    try:
        return parse_dtm(msh.get(7, 1), config.timezone)
    except ValueError:
        return None


def _time(
    seg: Segment | None, n: int, comp: int, config: TranslateConfig, problems: list[Problem]
) -> datetime | None:
    if seg is None:
        return None
    value = seg.get(n, comp)
    try:
        return parse_dtm(value, config.timezone)
    except ValueError:
        where = f"{seg.name}-{n}" + (f".{comp}" if comp > 1 else "")
        problems.append(_problem("time.invalid", "not a valid HL7 date/time", where))
        return None


def _ref_value(message: Message, ref: FieldRef) -> str:
    seg = message.first(ref.segment)
    if seg is None:
        return ""
    return seg.get(ref.field, ref.component).strip()


def _status_of(code: str, config: TranslateConfig) -> str | None:
    key = code.strip().lower()
    if not key:
        return None
    return config.status_map.get(key) or DEFAULT_STATUS_MAP.get(key)


def _siu(
    message: Message,
    spec: tuple[type[AppointmentEvent], str],
    source: SourceRef,
    occurred: datetime | None,
    config: TranslateConfig,
    problems: list[Problem],
) -> AppointmentEvent | None:
    cls, status = spec
    sch = message.first("SCH")
    if sch is None:
        problems.append(_problem("appointment.missing", "no SCH segment", "SCH"))
        return None
    appointment_id = ""
    for ref in config.appointment_id:
        appointment_id = _ref_value(message, ref)
        if appointment_id:
            break
    if not appointment_id:
        where = str(config.appointment_id[0]) if config.appointment_id else "SCH-2"
        problems.append(
            _problem("appointment.no_id", "no appointment id in the configured fields", where)
        )
    filler_code = sch.get(25, 1).strip()
    mapped = _status_of(filler_code, config)
    if filler_code and mapped is None:
        problems.append(_problem("status.unknown", "SCH-25 code not in the status map", "SCH-25"))
    if mapped is not None:
        if cls is AppointmentUpdated:
            status = mapped
        elif mapped != status:
            problems.append(
                _problem("status.mismatch", "SCH-25 disagrees with the trigger event", "SCH-25")
            )
    start, end = _siu_times(message, sch, config, problems)
    pid = message.first("PID")
    if pid is None:
        problems.append(_problem("patient.missing", "no PID segment", "PID"))
        return None
    patient = _patient(message, pid, config, problems)
    if patient is None or not appointment_id:
        return None
    appointment = AppointmentInfo(
        id=appointment_id,
        status=status,
        start=start,
        end=end,
        system=config.system,
        location=_location(message),
        practitioner=_practitioner(message),
        service=_service(message),
        schedule_id=sch.get(5, 1).strip() or None,
    )
    when = occurred or datetime.now(UTC)
    return cls(source=source, appointment=appointment, patient=patient, occurred_at=when)


#: (segment, start field, duration field, duration-units field) of the resource segments
_RESOURCE_TIMES = (("AIS", 4, 7, 8), ("AIL", 6, 9, 10), ("AIP", 6, 9, 10), ("AIG", 8, 11, 12))


def _siu_times(
    message: Message, sch: Segment, config: TranslateConfig, problems: list[Problem]
) -> tuple[datetime | None, datetime | None]:
    tq1 = message.first("TQ1")
    start = _time(tq1, 7, 1, config, problems)
    end = _time(tq1, 8, 1, config, problems) if start is not None else None
    if start is None:
        start = _time(sch, 11, 4, config, problems)
        end = _time(sch, 11, 5, config, problems) if start is not None else None
    resource_duration: timedelta | None = None
    if start is None:
        for seg in message.segments:
            for name, start_field, dur, units in _RESOURCE_TIMES:
                if seg.name == name and seg.get(start_field, 1).strip():
                    start = _time(seg, start_field, 1, config, problems)
                    resource_duration = parse_duration(seg.get(dur, 1), seg.get(units, 1))
                    break
            if start is not None:
                break
    if start is None:
        problems.append(
            _problem(
                "appointment.no_start", "no start time in TQ1, SCH-11 or AIS/AIL/AIP/AIG", "SCH-11"
            )
        )
        return None, None
    if end is None:
        duration = (
            parse_duration(sch.get(9, 1), sch.get(10, 1))
            or (parse_duration(tq1.get(13, 1), tq1.get(13, 2)) if tq1 is not None else None)
            or parse_duration(sch.get(11, 3))
            or resource_duration
        )
        if duration is None:
            ais = message.first("AIS")
            if ais is not None:
                duration = parse_duration(ais.get(7, 1), ais.get(8, 1))
        if duration is not None:
            end = start + duration
    if end is not None and end < start:
        problems.append(_problem("time.invalid", "end is before start; end dropped", "SCH-11"))
        end = None
    return start, end


def _location(message: Message) -> str | None:
    ail = message.first("AIL")
    if ail is None:
        pv1 = message.first("PV1")
        return _place(pv1, 3) if pv1 is not None else None
    return _place(ail, 3)


def _place(seg: Segment, n: int) -> str | None:
    """A PL value as display text: description (PL-9) else point of care, room, facility."""
    description = seg.get(n, 9).strip()
    if description:
        return description
    parts: list[str] = []
    for comp in (1, 2, 4):
        value = seg.get(n, comp).strip()
        if value and value not in parts:
            parts.append(value)
    return ", ".join(parts) or None


def _person(seg: Segment, n: int) -> str | None:
    """An XCN as display text: prefix, given, family (family's own subcomponent)."""
    family = seg.get(n, 2).strip()
    given = seg.get(n, 3).strip()
    prefix = seg.get(n, 6).strip()
    words = [w for w in (prefix, given, family) if w]
    return " ".join(words) or None


def _practitioner(message: Message) -> str | None:
    aip = message.first("AIP")
    if aip is not None and (name := _person(aip, 3)):
        return name
    aig = message.first("AIG")
    if aig is not None and (text := aig.get(3, 2).strip()):
        return text
    pv1 = message.first("PV1")
    return _person(pv1, 7) if pv1 is not None else None


def _service(message: Message) -> str | None:
    ais = message.first("AIS")
    if ais is None:
        return None
    return ais.get(3, 2).strip() or ais.get(3, 5).strip() or None


def _patient(
    message: Message, pid: Segment, config: TranslateConfig, problems: list[Problem]
) -> PatientInfo | None:
    return build_patient(
        message,
        pid,
        problems,
        region=config.phone_region,
        id_type=config.patient_id_type,
        language_map=config.language_map,
    )


def _oru(
    message: Message,
    source: SourceRef,
    occurred: datetime | None,
    config: TranslateConfig,
    problems: list[Problem],
) -> list[Event]:
    """One event per final filler order; OBX contents are never read, only OBX-11."""
    events: list[Event] = []
    seen: set[str] = set()
    patient: PatientInfo | None = None
    orc: Segment | None = None
    orders: list[tuple[Segment, Segment | None, list[str], PatientInfo | None]] = []
    for seg in message.segments:
        if seg.name == "PID":
            patient = _patient(message, seg, config, problems)
            orc = None
        elif seg.name == "ORC":
            orc = seg
        elif seg.name == "OBR":
            orders.append((seg, orc, [], patient))
            orc = None
        elif seg.name == "OBX" and orders:
            orders[-1][2].append(seg.get(11, 1).strip().upper())
    if message.first("PID") is None:
        problems.append(_problem("patient.missing", "no PID segment", "PID"))
    when = occurred or datetime.now(UTC)
    for obr, order_control, obx_statuses, who in orders:
        status_code = obr.get(25, 1).strip().upper()
        if not status_code and obx_statuses and all(s in _RESULT_STATUS for s in obx_statuses):
            status_code = "C" if "C" in obx_statuses else "F"
        status = _RESULT_STATUS.get(status_code)
        if status is None:
            continue
        filler = obr.get(3, 1).strip() or (order_control.get(3, 1).strip() if order_control else "")
        if not filler:
            problems.append(
                _problem("result.no_id", "final result without a filler order number", "OBR-3")
            )
            continue
        if filler in seen or who is None:
            continue
        seen.add(filler)
        issued = _time(obr, 22, 1, config, problems)
        events.append(
            LabResultAvailable(
                source=source,
                result=ResultInfo(id=filler, status=status, system=config.system, issued=issued),
                patient=who,
                occurred_at=when,
            )
        )
    return events


def charset_codec(name: str) -> str | None:
    """The Python codec for an MSH-18 value or a codec name, None when unknown."""
    known = _CHARSETS.get(name.strip().upper())
    if known is not None:
        return known
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None
