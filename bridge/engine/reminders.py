"""Reminder planning: when each reminder of an appointment is due. A pure function.

Rules (issue 6): offsets before the appointment (default 72 h and 24 h; per service), in the
clinic's time zone, never inside quiet hours (a due time inside is moved to the end of the quiet
period, the next morning), never in the past (a reminder whose time has passed is sent now if
there is still enough lead time), never closer to the appointment than the minimum lead time, and
spread by a jitter that is stable per appointment, so a clinic-day's batch does not hit Meta's
throughput limit in one second and re-planning the same appointment gives the same times.
"""

from __future__ import annotations

__all__ = ["PlannedReminder", "ReminderPolicy", "plan_reminders"]

import hashlib
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True, kw_only=True, slots=True)
class ReminderPolicy:
    """The site's reminder rules."""

    offsets: tuple[timedelta, ...] = (timedelta(hours=72), timedelta(hours=24))
    timezone: str = "UTC"
    quiet_start: time = time(20, 0)
    quiet_end: time = time(8, 0)
    min_lead: timedelta = timedelta(hours=1)
    jitter: timedelta = timedelta(minutes=20)


@dataclass(frozen=True, kw_only=True, slots=True)
class PlannedReminder:
    """One reminder: ``slot`` names it (``72h``) in idempotency keys; ``due_at`` is UTC."""

    slot: str
    due_at: datetime


#: A catch-up reminder is skipped when a planned one follows within this time.
_MIN_GAP = timedelta(hours=6)


def _in_quiet(local: datetime, policy: ReminderPolicy) -> bool:
    t = local.timetz().replace(tzinfo=None)
    start, end = policy.quiet_start, policy.quiet_end
    if start == end:
        return False
    if start < end:
        return start <= t < end
    return t >= start or t < end


def _end_of_quiet(local: datetime, policy: ReminderPolicy) -> datetime:
    end_today = local.replace(
        hour=policy.quiet_end.hour, minute=policy.quiet_end.minute, second=0, microsecond=0
    )
    return end_today if end_today > local else end_today + timedelta(days=1)


def _stable_fraction(key: str) -> float:
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def _slot_name(offset: timedelta) -> str:
    hours = offset.total_seconds() / 3600
    return f"{hours:g}h"


def plan_reminders(
    *, subject_key: str, start: datetime, now: datetime, policy: ReminderPolicy
) -> list[PlannedReminder]:
    """Due times of the reminders for an appointment starting at ``start``.

    Args:
        subject_key: the appointment's key (seeds the jitter).
        start: appointment start, timezone-aware.
        now: the current time, timezone-aware.
        policy: the site's rules.

    Returns:
        Reminders sorted by due time; none for an appointment already too close or past.
        Offsets whose time has already passed collapse into one reminder sent now, and that
        one is dropped when a later reminder is due within ``_MIN_GAP`` anyway (an appointment
        booked 25 h ahead gets one reminder, not two an hour apart).
    """
    zone = ZoneInfo(policy.timezone)
    latest = start - policy.min_lead
    jitter = policy.jitter * _stable_fraction(subject_key)
    dues: dict[str, datetime] = {}
    overdue: str | None = None
    for offset in sorted(set(policy.offsets), reverse=True):
        due = start - offset - jitter
        if due < now:
            overdue = _slot_name(offset)  # the smallest past offset names the catch-up
            continue
        dues[_slot_name(offset)] = due
    if overdue is not None:
        future = list(dues.values())
        if not future or min(future) - now >= _MIN_GAP:
            dues[overdue] = now
    planned: list[PlannedReminder] = []
    for slot, raw in sorted(dues.items(), key=lambda item: item[1]):
        due = raw
        local = due.astimezone(zone)
        if _in_quiet(local, policy):
            due = _end_of_quiet(local, policy).astimezone(due.tzinfo)
        if due > latest or (planned and due <= planned[-1].due_at):
            continue
        planned.append(PlannedReminder(slot=slot, due_at=due))
    return planned
