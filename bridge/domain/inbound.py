"""What a connector hands to the store for one inbound message, and what it gets back.

A connector stores first and acknowledges after: it builds an :class:`InboundMessage` (raw bytes,
dedupe identity, translated events, problems) and awaits ``EventSink.ingest``; only when that
returns is the message durable, and only then may the sender be told ``AA`` / 2xx.
"""

from __future__ import annotations

__all__ = ["InboundMessage", "IngestOutcome", "Problem", "Translation", "payload_hash"]

import enum
import hashlib
from dataclasses import dataclass, field

from bridge.domain.events import Event


def payload_hash(payload: bytes) -> str:
    """SHA-256 hex of the raw payload: half of the dedupe key."""
    return hashlib.sha256(payload).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """Something in an input the bridge could not use as it is.

    ``code`` is stable and machine-readable (``phone.invalid``, ``appointment.no_id``); ``field``
    names where (``PID-13``, ``Patient.telecom``); ``message`` explains in words without patient
    data. ``fatal`` problems mean the message as a whole could not be understood (quarantine).
    """

    code: str
    message: str
    field: str | None = None
    fatal: bool = False

    def marshal(self) -> dict[str, object]:
        """Return a JSON-able dict."""
        return {
            "code": self.code,
            "field": self.field,
            "message": self.message,
            "fatal": self.fatal,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Translation:
    """The result of translating one inbound payload: events and problems, never an exception."""

    events: tuple[Event, ...] = ()
    problems: tuple[Problem, ...] = ()
    #: the source's message id (MSH-10 trimmed, FHIR id/_history/version, wamid), when known
    message_id: str | None = None

    @property
    def fatal(self) -> bool:
        """True when the payload as a whole could not be understood."""
        return any(p.fatal for p in self.problems)

    def marshal(self) -> dict[str, object]:
        """The ``bridge inspect --json`` object."""
        return {
            "events": [e.marshal() for e in self.events],
            "problems": [p.marshal() for p in self.problems],
        }


class IngestOutcome(enum.Enum):
    """What the store made of an inbound message."""

    ACCEPTED = "accepted"  #: new; stored with its events
    DUPLICATE = "duplicate"  #: same key and same payload as one already stored: no new events
    CONFLICT = "conflict"  #: same key, different payload: stored, processed and reported
    QUARANTINED = "quarantined"  #: could not be understood: stored with the reason, no events


@dataclass(frozen=True, kw_only=True, slots=True)
class InboundMessage:
    """One raw inbound message with its dedupe identity and translation.

    Attributes:
        connector: ``hl7v2``, ``fhir``, ``whatsapp``.
        sender: who sent it (HL7 MSH-3^MSH-4, FHIR base URL, WhatsApp phone-number id).
        source_id: the sender's message id (trimmed MSH-10, FHIR id+version, POST hash).
        payload: the raw bytes, exactly as received.
        translation: events and problems; a fatal problem quarantines the message.
        content_type: a hint for operators (``application/hl7-v2``, ``application/json``).
    """

    connector: str
    sender: str
    source_id: str
    payload: bytes
    translation: Translation = field(default_factory=Translation)
    content_type: str = "application/octet-stream"

    @property
    def payload_hash(self) -> str:
        """SHA-256 of the payload."""
        return payload_hash(self.payload)
