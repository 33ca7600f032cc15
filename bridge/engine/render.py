"""Send-time checks and rendering: the relay's ``prepare`` hook.

A row is rendered when it is sent, not when it is planned, so the message uses the EHR's latest
word (a changed location, a corrected name) and every rule is checked at the last moment:

- consent: an opted-out address gets nothing but the opt-out acknowledgement;
- a reminder goes out only while its appointment is still booked at the planned time;
- an EHR privacy flag stops reminders and notices;
- free-form and interactive messages need the 24-hour window: outside it the message's template
  fallback is sent instead, or nothing (with the reason), never a message Meta rejects with
  131047;
- buttons get signed reply tokens naming this very row.

Rows on ``ehr:*`` and ``staff`` channels carry their command or alert as they are.
"""

from __future__ import annotations

__all__ = ["Renderer"]

from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from bridge.config import EngineSettings
from bridge.domain import FreeSlot, PatientInfo, ResultInfo
from bridge.engine.mappings import MappingSet, RenderContext
from bridge.engine.tokens import PortalTokens, ReplyTokens
from bridge.errors import SkipNotification
from bridge.ports import AcquiredRow, Clock, Notification
from bridge.store.appointments import AppointmentStore
from bridge.store.consent import ConsentLedger
from bridge.store.conversations import Conversations

#: Meta's customer-service window.
WINDOW = timedelta(hours=24)
#: Messages that are allowed whatever the consent ledger says.
_ALWAYS_ALLOWED = frozenset({"optout_ack"})
#: Intents whose buttons a message may carry, with the token suffix of each payload key.
_PAYLOAD_KEYS: dict[str, tuple[str, str | None]] = {
    "confirm": ("confirm", None),
    "cancel": ("cancel", None),
    "reschedule": ("reschedule", None),
    "cancel_yes": ("cancel", "yes"),
    "keep": ("cancel", "no"),
    **{f"rating{n}": ("rating", str(n)) for n in range(1, 6)},
}


class Renderer:
    """Turns leased rows into notifications, or skips them with a reason."""

    def __init__(
        self,
        *,
        clock: Clock,
        mappings: MappingSet,
        appointments: AppointmentStore,
        conversations: Conversations,
        consent: ConsentLedger,
        tokens: ReplyTokens,
        portal: PortalTokens,
        settings: EngineSettings,
        timezone: str,
    ) -> None:
        self._clock = clock
        self._mappings = mappings
        self._appointments = appointments
        self._conversations = conversations
        self._consent = consent
        self._tokens = tokens
        self._portal = portal
        self._settings = settings
        self._timezone = timezone

    async def prepare(self, row: AcquiredRow) -> Notification:
        """The notification for ``row``.

        Raises:
            SkipNotification: the row must not be sent (reason given).
            bridge.errors.MappingError: it cannot be rendered (permanent).
        """
        payload = row.payload
        if row.channel != "whatsapp":
            return Notification(
                outbox_id=row.id,
                to=str(payload.get("subject") or ""),
                kind="command",
                content=payload,
            )
        message = str(payload["message"])
        address = str(payload["address"])
        if message not in _ALWAYS_ALLOWED and await self._consent.opted_out(address):
            raise SkipNotification("opted_out")
        if message == "staff_text":  # typed by staff in `bridge handoff reply`, sent as is
            kind, content = "text", {"body": str(payload.get("text", ""))}
        else:
            context, language = await self._context(row, message, address)
            kind, content = self._mappings.render(message, language, context)
        if kind != "template" and not await self._window_open(address):
            fallback = payload.get("fallback")
            if not fallback:
                raise SkipNotification("window_closed")
            context, language = await self._context(row, str(fallback), address)
            kind, content = self._mappings.render(str(fallback), language, context)
        reply_to = payload.get("reply_to")
        if reply_to and kind != "template":
            content = {**content, "reply_to": reply_to}
        return Notification(outbox_id=row.id, to=address, kind=kind, content=content)

    async def _context(
        self, row: AcquiredRow, message: str, address: str
    ) -> tuple[RenderContext, str | None]:
        payload = row.payload
        now = self._clock.now()
        subject = payload.get("subject")
        language: str | None = payload.get("language")
        appointment_info = None
        patient = PatientInfo(
            id="-", phone=address, language=language, given_name=payload.get("given_name")
        )
        if isinstance(subject, str) and subject.startswith("appointment:"):
            record = await self._appointments.get(subject)
            if record is None:
                raise SkipNotification("unknown_appointment")
            appointment_info, patient = record.info, record.patient
            language = language or patient.language
            if row.kind in ("reminder", "results") and not patient.contact_allowed:
                raise SkipNotification("ehr_privacy_flag")
            if row.kind == "reminder":
                planned = payload.get("planned_start")
                start = record.info.start
                if (
                    record.info.status != "booked"
                    or start is None
                    or (planned and start != datetime.fromisoformat(planned))
                ):
                    raise SkipNotification("replanned")
                if start <= now:
                    raise SkipNotification("appointment_passed")
        result = None
        portal_token = None
        if row.kind == "results":
            result = ResultInfo(id=str(payload.get("result_id", "")), status="final")
            expires = now + timedelta(hours=self._settings.portal_token_hours)
            portal_token = self._portal.issue(result.id, expires)
        payloads = _LazyPayloads(self._tokens, row.id)
        slots_raw: list[dict[str, Any]] = list(payload.get("slots") or [])
        slots = [
            FreeSlot(
                id=s["id"],
                start=datetime.fromisoformat(s["start"]),
                end=datetime.fromisoformat(s["end"]),
            )
            for s in slots_raw
        ]
        slot_payloads = [self._tokens.payload("slot", row.id, str(i)) for i in range(len(slots))]
        context = RenderContext(
            patient=patient,
            appointment=appointment_info,
            result=result,
            timezone=self._timezone,
            portal_token=portal_token,
            payloads=payloads,
            slots=slots,
            slot_payloads=slot_payloads,
        )
        return context, language or self._settings.default_language

    async def _window_open(self, address: str) -> bool:
        conversation = await self._conversations.get(address)
        last = conversation.last_inbound_at if conversation else None
        return last is not None and self._clock.now() - last < WINDOW


class _LazyPayloads(Mapping[str, str]):
    """The button payloads of one row, each signed only when a template asks for it.

    A message uses two or three of the ten intents; signing all of them for every row was a
    visible share of the relay's time per send.
    """

    def __init__(self, tokens: ReplyTokens, outbox_id: int) -> None:
        self._tokens = tokens
        self._outbox_id = outbox_id
        self._issued: dict[str, str] = {}

    def __getitem__(self, key: str) -> str:
        value = self._issued.get(key)
        if value is None:
            intent, suffix = _PAYLOAD_KEYS[key]  # KeyError for an unknown key, as a dict does
            value = self._issued[key] = self._tokens.payload(intent, self._outbox_id, suffix)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(_PAYLOAD_KEYS)

    def __len__(self) -> int:
        return len(_PAYLOAD_KEYS)
