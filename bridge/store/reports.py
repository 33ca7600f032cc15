"""``bridge report``: what the bridge did per clinic and period, from the database alone.

Counts only: messages by delivery outcome and failure reason, decisions written back, opt-outs,
handoffs, and the median time from a reminder to the patient's decision. The clinic is the
appointment's location as the EHR named it ("-" for messages not tied to an appointment).
Aggregation is done in Python over the period's rows: reports are run by people, not at
1,000 per second, and the same code then works on SQLite and PostgreSQL. Patients are told
apart by their address as stored, so with a data key (lookup hashes) the figures are the same.
"""

from __future__ import annotations

__all__ = ["ClinicReport", "build_report"]

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select

from bridge.store.database import Database
from bridge.store.sealing import PLAIN, DataCipher
from bridge.store.tables import appointment, audit, consent, outbox

#: Outbox kinds that are messages to patients.
_PATIENT_KINDS = ("reminder", "results", "notice", "reply", "survey")


@dataclass
class ClinicReport:
    """Figures for one clinic."""

    clinic: str
    sent: int = 0
    delivered: int = 0
    read: int = 0
    failed: int = 0
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    confirmed: int = 0
    cancelled: int = 0
    rescheduled: int = 0
    opt_outs: int = 0
    handoffs: int = 0
    reply_seconds: list[float] = field(default_factory=list)
    ratings: list[int] = field(default_factory=list)

    @property
    def median_reply_minutes(self) -> float | None:
        """Median minutes from the first reminder to the patient's decision."""
        if not self.reply_seconds:
            return None
        return round(statistics.median(self.reply_seconds) / 60, 1)

    def row(self) -> dict[str, object]:
        """Flat figures for a table or CSV."""
        reasons = ", ".join(f"{code}:{n}" for code, n in self.failed_by_reason.most_common())
        return {
            "clinic": self.clinic,
            "sent": self.sent,
            "delivered": self.delivered,
            "read": self.read,
            "failed": self.failed,
            "failed_by_reason": reasons or "-",
            "confirmed": self.confirmed,
            "cancelled": self.cancelled,
            "rescheduled": self.rescheduled,
            "opt_outs": self.opt_outs,
            "handoffs": self.handoffs,
            "median_reply_min": self.median_reply_minutes
            if self.median_reply_minutes is not None
            else "-",
            "survey_n": len(self.ratings),
            "survey_avg": round(statistics.mean(self.ratings), 2) if self.ratings else "-",
        }


async def build_report(
    db: Database, since: datetime, until: datetime, cipher: DataCipher = PLAIN
) -> list[ClinicReport]:
    """One :class:`ClinicReport` per clinic with activity in ``[since, until)``, sorted.

    Args:
        db: the database.
        since: start of the period.
        until: end of the period (excluded).
        cipher: opens sealed outbox payloads (the decision of an EHR command).

    Raises:
        bridge.store.sealing.SealedDataError: payloads are sealed and the key is missing.
    """
    async with db.read() as conn:
        clinics = {
            r.subject_key: (r.location or "-")
            for r in (
                await conn.execute(select(appointment.c.subject_key, appointment.c.location))
            ).all()
        }
        rows = (
            await conn.execute(
                select(
                    outbox.c.kind,
                    outbox.c.subject_key,
                    outbox.c.state,
                    outbox.c.delivery_status,
                    outbox.c.last_error_code,
                    outbox.c.payload,
                    outbox.c.sent_at,
                    outbox.c.created_at,
                    outbox.c.recipient_key,
                ).where(outbox.c.created_at >= since, outbox.c.created_at < until)
            )
        ).all()
        opt_outs = (
            (
                await conn.execute(
                    select(consent.c.address).where(
                        consent.c.action == "opt_out",
                        consent.c.recorded_at >= since,
                        consent.c.recorded_at < until,
                    )
                )
            )
            .scalars()
            .all()
        )
        handoffs = (
            (
                await conn.execute(
                    select(audit.c.subject).where(
                        audit.c.action == "handoff", audit.c.at >= since, audit.c.at < until
                    )
                )
            )
            .scalars()
            .all()
        )
        ratings = (
            await conn.execute(
                select(audit.c.subject, audit.c.detail).where(
                    audit.c.action == "survey.rating", audit.c.at >= since, audit.c.at < until
                )
            )
        ).all()
        first_reminder: dict[str, datetime] = {}
        for sent in (
            await conn.execute(
                select(outbox.c.subject_key, outbox.c.sent_at).where(
                    outbox.c.kind == "reminder", outbox.c.sent_at.is_not(None)
                )
            )
        ).all():
            key = sent.subject_key
            if key not in first_reminder or sent.sent_at < first_reminder[key]:
                first_reminder[key] = sent.sent_at

    reports: dict[str, ClinicReport] = defaultdict(lambda: ClinicReport(clinic="-"))
    address_clinic: dict[str, str] = {}

    def report_for(clinic: str) -> ClinicReport:
        rep = reports[clinic]
        rep.clinic = clinic
        return rep

    for r in rows:
        clinic = clinics.get(r.subject_key or "", "-")
        if r.recipient_key and clinic != "-":
            address_clinic[r.recipient_key] = clinic
        rep = report_for(clinic)
        if r.kind in _PATIENT_KINDS:
            if r.state == "sent":
                rep.sent += 1
            status = r.delivery_status
            if status in ("delivered", "read"):
                rep.delivered += 1
            if status == "read":
                rep.read += 1
            if r.state in ("failed", "dead") or status == "failed":
                rep.failed += 1
                rep.failed_by_reason[r.last_error_code or "unknown"] += 1
        elif r.kind == "ehr" and r.state == "sent":
            decision = (cipher.open_json(r.payload) or {}).get("command")
            if decision == "confirm":
                rep.confirmed += 1
            elif decision == "cancel":
                rep.cancelled += 1
            elif decision == "reschedule":
                rep.rescheduled += 1
            reminded = first_reminder.get(r.subject_key or "")
            if reminded is not None and r.created_at >= reminded:
                rep.reply_seconds.append((r.created_at - reminded).total_seconds())
    for address in opt_outs:
        report_for(address_clinic.get(address, "-")).opt_outs += 1
    for subject in handoffs:
        address = (subject or "").removeprefix("address:")
        report_for(address_clinic.get(address, "-")).handoffs += 1
    for rated in ratings:
        value = str((rated.detail or {}).get("rating") or "")
        if value.isdigit() and 1 <= int(value) <= 5:
            report_for(clinics.get(rated.subject or "", "-")).ratings.append(int(value))
    return sorted(reports.values(), key=lambda rep: rep.clinic)
