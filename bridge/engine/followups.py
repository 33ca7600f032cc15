"""After a batch is sent: audit every outcome, and follow decisions with the patient's answer.

When the EHR accepted a decision, the patient is told (inside the 24-hour window as a short text,
outside it with the matching template) and reminders that no longer apply are dropped at once,
without waiting for the EHR's own update message. When the EHR refused or never answered, the
patient gets a kind message and staff get the conversation: a person is needed.
"""

from __future__ import annotations

__all__ = ["FollowUps"]

from collections.abc import Sequence
from typing import Any

from bridge.engine.planner import message_row
from bridge.ports import AcquiredRow, Clock, OutboxRow, ReleaseResult
from bridge.store import AuditLog, SqlOutbox
from bridge.store.audit import AuditEntry
from bridge.store.conversations import Conversations

#: decision → (text inside the window, template outside it)
_ANSWERS = {
    "confirm": ("confirmed_text", "confirmed"),
    "cancel": ("cancelled_text", "cancelled"),
    "reschedule": ("rescheduled_text", "rescheduled"),
}


class FollowUps:
    """The relay's ``after_release`` hook."""

    def __init__(
        self, *, clock: Clock, outbox: SqlOutbox, audit: AuditLog, conversations: Conversations
    ) -> None:
        self._clock = clock
        self._outbox = outbox
        self._audit = audit
        self._conversations = conversations

    async def __call__(self, batch: Sequence[tuple[AcquiredRow, ReleaseResult]]) -> None:
        """Audit the batch and plan what follows from it."""
        entries: list[AuditEntry] = []
        rows: list[OutboxRow] = []
        for row, result in batch:
            outcome = _outcome(result)
            detail: dict[str, Any] = {
                "outbox_id": row.id,
                "kind": row.kind,
                "attempt": row.attempts,
            }
            if result.external_id:
                detail["external_id"] = result.external_id
            if result.error_code:
                detail["code"] = result.error_code
            if row.kind == "ehr":
                entries.append(("relay", f"ehr.{outcome}", row.subject_key, detail))
                await self._after_decision(row, result, outcome, rows)
            else:
                entries.append(("relay", f"{row.channel}.{outcome}", row.subject_key, detail))
        await self._audit.append_many(entries)
        if rows:
            await self._outbox.enqueue(rows)

    async def _after_decision(
        self, row: AcquiredRow, result: ReleaseResult, outcome: str, rows: list[OutboxRow]
    ) -> None:
        payload = row.payload
        decision = str(payload.get("command"))
        address = payload.get("address")
        subject = row.subject_key
        if not address or outcome == "retry":
            return
        if outcome == "sent":
            if decision in ("cancel", "reschedule") and subject:
                await self._outbox.cancel_subject(subject, kinds=["reminder"])
            message, fallback = _ANSWERS.get(decision, ("confirmed_text", "confirmed"))
            key = f"notice|{payload.get('command_id')}"
        else:
            # refused, dead-lettered or skipped: the patient is told, a person takes over
            conflict = result.error_code == "ehr_conflict"
            message = "slot_taken" if decision == "reschedule" and conflict else "ehr_failed"
            fallback, key = None, f"notice|{payload.get('command_id')}|failed"
            await self._conversations.hand_off(str(address), f"ehr_{outcome}")
        rows.append(
            message_row(
                kind="notice",
                message=message,
                address=str(address),
                key=key,
                due_at=self._clock.now(),
                language=payload.get("language"),
                subject=subject,
                reply_to=payload.get("reply_wamid"),
                **({"fallback": fallback} if fallback else {}),
            )
        )


def _outcome(result: ReleaseResult) -> str:
    if result.external_id:
        return "sent"
    if result.cancelled:
        return "skipped"
    if result.dead:
        return "dead"
    if result.failed:
        return "failed"
    return "retry"
