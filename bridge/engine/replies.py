"""Replies: what a patient's message means, and what the bridge does about it.

Every reply is handled once per WhatsApp message id (a ``kv`` row claims it atomically), then:

- ``stop`` / ``start``: the consent ledger changes at once; only the acknowledgement is sent.
  An opted-out patient gets nothing else, whatever they write (consent wins).
- in a conversation a person has taken over, the bot stays silent.
- ``help``, or too many replies the bot does not understand: hand the conversation to staff.
- ``confirm``: a confirm command for the EHR (an outbox row on ``ehr:<connector>``); the patient's
  confirmation message follows once the EHR accepted it (``bridge.engine.followups``).
- ``cancel``: first "are you sure?" with two buttons (a mis-tap must not free a real slot; the
  second tap costs the patient one second, a wrong cancellation costs the hospital the slot and
  the patient the appointment), then the cancel command. Sites can turn the question off.
- ``reschedule``: free slots from the connector as an interactive list; the chosen slot becomes a
  reschedule command. No slots, or a connector that cannot offer any: a person takes over.

Button taps carry a signed token naming the outbox row that showed the button; free text is tied
to the patient's next booked appointment. A forged token, an old message or a reply we cannot
tie to anything gets a kind answer, never silence, and the reason goes to the audit log.
"""

from __future__ import annotations

__all__ = ["ReplyHandler"]

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from bridge.config import EngineSettings
from bridge.domain import (
    AppointmentRef,
    CancelAppointment,
    ConfirmAppointment,
    Event,
    ReplyReceived,
    SchedulingCommand,
)
from bridge.engine.commands import command_payload
from bridge.engine.delivery import DeliveryTracker
from bridge.engine.planner import message_row
from bridge.engine.tokens import ReplyTokens
from bridge.ports import Clock, Connector, OutboxRow, SlotFinder
from bridge.store import AuditLog, Database, SqlOutbox
from bridge.store.appointments import AppointmentRecord, AppointmentStore
from bridge.store.consent import ConsentLedger
from bridge.store.conversations import Conversations
from bridge.store.sealing import PLAIN, DataCipher
from bridge.store.tables import kv, outbox


class ReplyHandler:
    """The ``reply.received`` handler."""

    def __init__(
        self,
        *,
        db: Database,
        clock: Clock,
        outbox: SqlOutbox,
        appointments: AppointmentStore,
        conversations: Conversations,
        consent: ConsentLedger,
        audit: AuditLog,
        delivery: DeliveryTracker,
        tokens: ReplyTokens,
        connectors: Mapping[str, Connector],
        settings: EngineSettings,
        cipher: DataCipher = PLAIN,
    ) -> None:
        self._cipher = cipher
        self._db = db
        self._clock = clock
        self._outbox = outbox
        self._appointments = appointments
        self._conversations = conversations
        self._consent = consent
        self._audit = audit
        self._delivery = delivery
        self._tokens = tokens
        self._connectors = connectors
        self._settings = settings

    async def on_reply(self, evt: Event) -> str | None:
        """Handle one patient message (idempotent per WhatsApp message id)."""
        assert isinstance(evt, ReplyReceived)  # noqa: S101 - routed by type
        await self._delivery.on_reply(evt)
        if not await self._claim(evt.message_id):
            return None
        address = evt.channel_user
        await self._audit.append(
            "patient",
            "reply.received",
            self._cipher.address_subject(address),
            {"wamid": evt.message_id, "intent": evt.intent, "type": evt.message_type},
        )
        if evt.intent == "stop":
            await self._consent.record(
                address, "opt_out", source="whatsapp", evidence=evt.message_id
            )
            await self._say(address, "optout_ack", evt, None, None)
            return None
        if evt.intent == "start":
            await self._consent.record(
                address, "opt_in", source="whatsapp", evidence=evt.message_id
            )
            await self._say(address, "optin_ack", evt, None, None)
            return None
        if await self._consent.opted_out(address):
            return None
        conversation = await self._conversations.get(address)
        if conversation is not None and conversation.mode == "handoff":
            return None
        if evt.intent == "help":
            await self._hand_off(address, "patient_asked", evt, None)
            return None
        if evt.intent in ("unknown", "slot", "rating") and evt.token is None:
            await self._not_understood(address, evt)
            return None

        record, origin, problem = await self._target(evt)
        if record is None:
            await self._audit.append(
                "engine",
                "reply.unmatched",
                self._cipher.address_subject(address),
                {"wamid": evt.message_id, "reason": problem},
            )
            await self._say(
                address, "expired_reply" if problem == "expired" else "not_linked", evt, None, None
            )
            return None
        await self._conversations.reset_unknown(address)
        language = record.patient.language
        if evt.intent == "confirm":
            await self._command(record, ConfirmAppointment, evt)
        elif evt.intent == "cancel":
            choice = origin.get("suffix") if origin else None
            if choice == "no":
                await self._say(address, "kept_text", evt, record, language)
            elif choice == "yes" or not self._settings.ask_before_cancel:
                await self._command(record, CancelAppointment, evt)
            else:
                await self._say(address, "cancel_question", evt, record, language)
        elif evt.intent == "reschedule":
            await self._offer_slots(record, evt)
        elif evt.intent == "slot":
            await self._book_slot(record, origin, evt)
        elif evt.intent == "rating":
            await self._audit.append(
                "patient",
                "survey.rating",
                record.subject_key,
                {"rating": origin.get("suffix") if origin else None, "wamid": evt.message_id},
            )
            await self._say(address, "survey_thanks", evt, record, language)
        return None

    async def _claim(self, wamid: str) -> bool:
        """Atomically mark this message as handled; False when it already was."""
        insert = sqlite.insert if self._db.is_sqlite else postgresql.insert
        stmt = insert(kv).values(
            name=f"reply:{wamid}", value="handled", updated_at=self._clock.now()
        )
        stmt = stmt.on_conflict_do_nothing(index_elements=["name"])
        async with self._db.write() as conn:
            result = await conn.execute(stmt)
        return bool(result.rowcount)

    async def _target(
        self, evt: ReplyReceived
    ) -> tuple[AppointmentRecord | None, dict[str, Any] | None, str]:
        """The appointment a reply is about, the outbox row it answers, or why there is none."""
        now = self._clock.now()
        if evt.token is not None:
            verified = self._tokens.verify(evt.intent, evt.token)
            if verified is None:
                return None, None, "bad_token"
            async with self._db.read() as conn:
                row = (
                    await conn.execute(
                        select(
                            outbox.c.subject_key, outbox.c.payload, outbox.c.recipient_key
                        ).where(outbox.c.id == verified.row_id)
                    )
                ).one_or_none()
            if row is None or row.subject_key is None:
                return None, None, "unknown_row"
            if row.recipient_key != self._cipher.lookup(evt.channel_user):
                return None, None, "other_recipient"
            record = await self._appointments.get(row.subject_key)
            if record is None:
                return None, None, "unknown_appointment"
            # a rating answers a visit that is over; everything else needs a booked, future one
            over = record.info.status != "booked" or (
                record.start is not None and record.start <= now
            )
            if over and evt.intent != "rating":
                return None, None, "expired"
            origin = {
                "row_id": verified.row_id,
                "suffix": verified.suffix,
                "payload": self._cipher.open_json(row.payload),
            }
            return record, origin, ""
        upcoming = await self._appointments.upcoming_for(evt.channel_user, now)
        if not upcoming:
            return None, None, "no_upcoming_appointment"
        return upcoming[0], None, ""

    async def _not_understood(self, address: str, evt: ReplyReceived) -> None:
        count = await self._conversations.count_unknown(address)
        if count >= self._settings.unknown_replies_before_handoff:
            await self._hand_off(address, "not_understood", evt, None)
        else:
            await self._say(address, "unknown_reply", evt, None, None)

    async def _command(
        self,
        record: AppointmentRecord,
        kind: type[SchedulingCommand],
        evt: ReplyReceived,
        **extra: Any,
    ) -> None:
        """Plan a command for the EHR, once per appointment, decision and start time."""
        start = record.start.isoformat() if record.start else "-"
        decision = kind.kind
        command = kind(
            command_id=f"{record.subject_key}|{decision}|{start}",
            appointment=AppointmentRef(
                system=record.info.system, value=record.info.id, version=record.info.version
            ),
            patient_id=record.patient.id,
            **extra,
        )
        payload = {
            **command_payload(command),
            "address": evt.channel_user,
            "language": record.patient.language,
            "subject": record.subject_key,
            "reply_wamid": evt.message_id,
        }
        row = OutboxRow(
            kind="ehr",
            channel=f"ehr:{record.connector}",
            idempotency_key=f"ehr|{command.command_id}"
            + (f"|{extra['slot'].id}" if "slot" in extra else ""),
            due_at=self._clock.now(),
            payload=payload,
            subject_key=record.subject_key,
            recipient_key=evt.channel_user,
        )
        await self._outbox.enqueue([row])
        await self._audit.append(
            "engine",
            f"decision.{decision}",
            record.subject_key,
            {"wamid": evt.message_id, "command_id": command.command_id},
        )

    async def _offer_slots(self, record: AppointmentRecord, evt: ReplyReceived) -> None:
        connector = self._connectors.get(record.connector)
        if not isinstance(connector, SlotFinder):
            await self._hand_off(evt.channel_user, "reschedule_unsupported", evt, record)
            return
        try:
            slots = await connector.free_slots(
                AppointmentRef(
                    system=record.info.system, value=record.info.id, version=record.info.version
                ),
                self._settings.slots_offered,
            )
        except Exception as exc:  # noqa: BLE001 - any EHR failure goes to a person
            await self._audit.append(
                "engine", "slots.failed", record.subject_key, {"error": type(exc).__name__}
            )
            slots = []
        if not slots:
            await self._say(evt.channel_user, "no_slots", evt, record, record.patient.language)
            await self._hand_off(evt.channel_user, "no_slots", evt, record, acknowledge=False)
            return
        offered = [
            {"id": s.id, "start": s.start.isoformat(), "end": s.end.isoformat()} for s in slots
        ]
        await self._say(
            evt.channel_user, "slot_list", evt, record, record.patient.language, slots=offered
        )

    async def _book_slot(
        self, record: AppointmentRecord, origin: dict[str, Any] | None, evt: ReplyReceived
    ) -> None:
        from bridge.domain import FreeSlot, RescheduleAppointment

        offered = (origin or {}).get("payload", {}).get("slots") or []
        try:
            chosen = offered[int((origin or {}).get("suffix") or "x")]
        except (ValueError, IndexError):
            await self._say(evt.channel_user, "expired_reply", evt, record, record.patient.language)
            return
        slot = FreeSlot(
            id=chosen["id"],
            start=datetime.fromisoformat(chosen["start"]),
            end=datetime.fromisoformat(chosen["end"]),
        )
        await self._command(record, RescheduleAppointment, evt, slot=slot)

    async def _hand_off(
        self,
        address: str,
        reason: str,
        evt: ReplyReceived,
        record: AppointmentRecord | None,
        *,
        acknowledge: bool = True,
    ) -> None:
        await self._conversations.hand_off(address, reason)
        await self._audit.append(
            "engine",
            "handoff",
            self._cipher.address_subject(address),
            {"reason": reason, "wamid": evt.message_id},
        )
        if self._settings.handoff_webhook_url:
            await self._outbox.enqueue(
                [
                    OutboxRow(
                        kind="staff",
                        channel="staff",
                        idempotency_key=f"staff|{evt.message_id}",
                        due_at=self._clock.now(),
                        recipient_key=address,
                        subject_key=record.subject_key if record else None,
                        payload={
                            "reason": reason,
                            "wamid": evt.message_id,
                            "patient_id": record.patient.id if record else None,
                            "appointment_id": record.info.id if record else None,
                        },
                    )
                ]
            )
        if acknowledge:
            await self._say(
                address,
                "handoff_ack" if reason != "patient_asked" else "help_ack",
                evt,
                record,
                record.patient.language if record else None,
            )

    async def _say(
        self,
        address: str,
        message: str,
        evt: ReplyReceived,
        record: AppointmentRecord | None,
        language: str | None,
        **extra: Any,
    ) -> None:
        """Plan one conversational answer, once per inbound message and answer kind."""
        await self._outbox.enqueue(
            [
                message_row(
                    kind="reply",
                    message=message,
                    address=address,
                    key=f"reply|{evt.message_id}|{message}",
                    due_at=self._clock.now(),
                    language=language,
                    subject=record.subject_key if record else None,
                    reply_to=evt.message_id,
                    **extra,
                )
            ]
        )
