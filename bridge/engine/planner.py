"""Planning: what each patient should get, as outbox rows with a due time.

Every appointment event updates the appointment's record and re-plans it: a booked future
appointment gets its reminders (keyed by appointment, start time and reminder slot, so
re-planning the same state adds nothing); a moved one loses the reminders planned for the old
time; a cancelled, deleted or no-show one loses every pending reminder. The relay checks again
at send time (``bridge.engine.render``), so even a reminder already leased when the cancel
arrives is not sent.

A final result becomes one results-ready notice, at most one per patient per window, carrying
no result content.
"""

from __future__ import annotations

__all__ = ["OUTBOX_KINDS", "Planner", "message_row"]

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from bridge.config import EngineSettings
from bridge.domain import (
    AppointmentEvent,
    Event,
    LabResultAvailable,
    PatientUpdated,
)
from bridge.engine.reminders import ReminderPolicy, plan_reminders
from bridge.ports import Clock, OutboxRow
from bridge.store import AuditLog, Database, SqlOutbox
from bridge.store.appointments import AppointmentStore
from bridge.store.inbox import subject_key
from bridge.store.sealing import PLAIN, DataCipher
from bridge.store.tables import outbox

#: Appointment state implied by the event type, whatever the status field says.
_STATUS_BY_TYPE = {
    "appointment.cancelled": "cancelled",
    "appointment.deleted": "entered-in-error",
    "appointment.noshow": "noshow",
}

#: Outbox ``kind`` values the engine writes, for operators reading ``bridge outbox list``.
OUTBOX_KINDS = ("reminder", "results", "notice", "reply", "ehr", "staff", "survey")


def message_row(
    *,
    kind: str,
    message: str,
    address: str,
    key: str,
    due_at: datetime,
    language: str | None,
    subject: str | None,
    **extra: Any,
) -> OutboxRow:
    """An outbox row for a patient message, rendered by the relay at send time.

    Args:
        kind: the outbox kind (reminder, results, notice, reply, survey).
        message: the mapping kind to render (``reminder``, ``confirmed_text``...).
        address: the patient's E.164 phone.
        key: the idempotency key.
        due_at: when to send.
        language: the patient's language, if known.
        subject: the appointment or result subject key.
        extra: anything the renderer needs (``planned_start``, ``slots``, ``fallback``).
    """
    payload: dict[str, Any] = {
        "message": message,
        "address": address,
        "language": language,
        "subject": subject,
        **extra,
    }
    return OutboxRow(
        kind=kind,
        idempotency_key=key,
        due_at=due_at,
        payload=payload,
        subject_key=subject,
        recipient_key=address,
    )


class Planner:
    """Event handlers for appointment, result and patient events."""

    def __init__(
        self,
        *,
        db: Database,
        clock: Clock,
        outbox: SqlOutbox,
        appointments: AppointmentStore,
        audit: AuditLog,
        settings: EngineSettings,
        timezone: str,
        cipher: DataCipher = PLAIN,
    ) -> None:
        self._db = db
        self._clock = clock
        self._outbox = outbox
        self._appointments = appointments
        self._audit = audit
        self._settings = settings
        self._timezone = timezone
        self._cipher = cipher

    def policy_for(self, service: str | None) -> ReminderPolicy:
        """The reminder policy, with the per-service offsets when the site set them."""
        s = self._settings
        hours = s.service_offsets_hours.get(service or "", s.reminder_offsets_hours)
        start_h, start_m = (int(x) for x in s.quiet_hours_start.split(":"))
        end_h, end_m = (int(x) for x in s.quiet_hours_end.split(":"))
        from datetime import time

        return ReminderPolicy(
            offsets=tuple(timedelta(hours=h) for h in hours),
            timezone=self._timezone,
            quiet_start=time(start_h, start_m),
            quiet_end=time(end_h, end_m),
            min_lead=timedelta(minutes=s.min_lead_minutes),
            jitter=timedelta(minutes=s.jitter_minutes),
        )

    async def on_appointment(self, evt: Event) -> str | None:
        """Record the appointment and re-plan its reminders."""
        assert isinstance(evt, AppointmentEvent)  # noqa: S101 - routed by type
        subject = subject_key(evt)
        assert subject is not None  # noqa: S101 - appointment events always have one
        # The event type decides the state; a vendor status field can lag behind it
        # (reference hl7v2.md §1.5: an S26 that still says "Booked").
        status = _STATUS_BY_TYPE.get(evt.type, evt.appointment.status)
        if status != evt.appointment.status:
            evt = replace(evt, appointment=replace(evt.appointment, status=status))
        previous, record = await self._appointments.upsert(subject, evt)
        info = evt.appointment
        now = self._clock.now()
        moved = previous is not None and previous.info.start != info.start
        if info.status != "booked" or moved:
            cancelled = await self._outbox.cancel_subject(subject, kinds=["reminder"])
            if cancelled:
                await self._audit.append(
                    "engine",
                    "reminders.cancelled",
                    subject,
                    {"rows": cancelled, "status": info.status, "event_id": evt.event_id},
                )
        if info.status == "fulfilled" and self._settings.survey_enabled:
            await self._plan_survey(subject, evt)
        if info.status != "booked" or info.start is None or info.start <= now:
            return None
        address = record.patient.phone
        if address is None or not evt.patient.contact_allowed:
            await self._audit.append(
                "engine",
                "reminders.not_planned",
                subject,
                {"reason": "no_phone" if address is None else "contact_not_allowed"},
            )
            return None
        language = record.patient.language
        rows = [
            message_row(
                kind="reminder",
                message="reminder",
                address=address,
                key=f"reminder|{subject}|{info.start.isoformat()}|{r.slot}",
                due_at=r.due_at,
                language=language,
                subject=subject,
                planned_start=info.start.isoformat(),
                slot=r.slot,
            )
            for r in plan_reminders(
                subject_key=subject, start=info.start, now=now, policy=self.policy_for(info.service)
            )
        ]
        await self._outbox.enqueue(rows, revive=True)
        return None

    async def _plan_survey(self, subject: str, evt: AppointmentEvent) -> None:
        record = await self._appointments.get(subject)
        if record is None or record.patient.phone is None:
            return
        await self._outbox.enqueue(
            [
                message_row(
                    kind="survey",
                    message="survey",
                    address=record.patient.phone,
                    key=f"survey|{subject}",
                    due_at=self._clock.now() + timedelta(hours=2),
                    language=record.patient.language,
                    subject=subject,
                    fallback=None,
                )
            ]
        )

    async def on_result(self, evt: Event) -> str | None:
        """Plan one results-ready notice, at most one per patient per window."""
        assert isinstance(evt, LabResultAvailable)  # noqa: S101 - routed by type
        subject = subject_key(evt)
        address = evt.patient.phone
        if address is None or not evt.patient.contact_allowed:
            await self._audit.append(
                "engine",
                "results.not_notified",
                subject,
                {"reason": "no_phone" if address is None else "contact_not_allowed"},
            )
            return None
        since = self._clock.now() - timedelta(hours=self._settings.results_window_hours)
        async with self._db.read() as conn:
            recent = (
                await conn.execute(
                    select(func.count())
                    .select_from(outbox)
                    .where(
                        outbox.c.kind == "results",
                        outbox.c.recipient_key == self._cipher.lookup(address),
                        outbox.c.created_at >= since,
                        outbox.c.state != "cancelled",
                        outbox.c.subject_key != subject,
                    )
                )
            ).scalar_one()
        if recent:
            await self._audit.append(
                "engine", "results.suppressed", subject, {"reason": "notice_window"}
            )
            return None
        await self._outbox.enqueue(
            [
                message_row(
                    kind="results",
                    message="results",
                    address=address,
                    key=f"results|{subject}",
                    due_at=self._clock.now(),
                    language=evt.patient.language,
                    subject=subject,
                    result_id=evt.result.id,
                    given_name=evt.patient.given_name,
                )
            ]
        )
        return None

    async def on_patient(self, evt: Event) -> str | None:
        """Demographics changed: refresh phone, language and privacy on their appointments."""
        assert isinstance(evt, PatientUpdated)  # noqa: S101 - routed by type
        await self._appointments.update_patient(evt.source.connector, evt.patient)
        return None

    def handlers(self) -> Mapping[str, Any]:
        """Handler per event type."""
        appointment_types: Sequence[str] = (
            "appointment.booked",
            "appointment.rescheduled",
            "appointment.updated",
            "appointment.cancelled",
            "appointment.deleted",
            "appointment.noshow",
        )
        handlers: dict[str, Any] = dict.fromkeys(appointment_types, self.on_appointment)
        handlers["result.available"] = self.on_result
        handlers["patient.updated"] = self.on_patient
        return handlers
