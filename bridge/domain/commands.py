"""Scheduling commands: decisions the bridge asks an EHR to apply, and what came of them.

Commands are imperative and carry the EHR's own appointment reference (``AppointmentRef``),
never a WhatsApp id. A connector applies a command and reports a :class:`CommandResult`; it
reads back where the EHR allows it, so ``verified`` means "we saw the change in the EHR".
"""

from __future__ import annotations

__all__ = [
    "AppointmentRef",
    "CancelAppointment",
    "CommandResult",
    "ConfirmAppointment",
    "FreeSlot",
    "RescheduleAppointment",
    "SchedulingCommand",
]

from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar


@dataclass(frozen=True, kw_only=True, slots=True)
class AppointmentRef:
    """The EHR's identity of an appointment: the id in the namespace of one source."""

    system: str
    value: str
    version: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class FreeSlot:
    """A slot a patient may pick when rescheduling. ``id`` is the EHR's slot id."""

    id: str
    start: datetime
    end: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class SchedulingCommand:
    """Base of the commands; ``command_id`` makes applying one idempotent on our side."""

    kind: ClassVar[str] = "command"

    command_id: str
    appointment: AppointmentRef
    patient_id: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ConfirmAppointment(SchedulingCommand):
    """The patient confirmed they will come."""

    kind: ClassVar[str] = "confirm"


@dataclass(frozen=True, kw_only=True, slots=True)
class CancelAppointment(SchedulingCommand):
    """The patient cancelled. ``reason`` is a code (FHIR ``pat``/``pat-crs``), never free text."""

    kind: ClassVar[str] = "cancel"
    reason: str = "pat"


@dataclass(frozen=True, kw_only=True, slots=True)
class RescheduleAppointment(SchedulingCommand):
    """The patient picked a free slot."""

    kind: ClassVar[str] = "reschedule"
    slot: FreeSlot


@dataclass(frozen=True, kw_only=True, slots=True)
class CommandResult:
    """What the EHR did with a command.

    Attributes:
        applied: the EHR accepted the change.
        verified: we read it back and saw it.
        code: the EHR's answer (``AA``, ``200``...).
        detail: a short reason without patient data.
    """

    applied: bool
    verified: bool = False
    code: str = ""
    detail: str = ""
