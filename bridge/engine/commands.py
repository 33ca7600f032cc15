"""Decisions to the EHR and alerts to staff, sent through the outbox like patient messages.

A patient's confirm, cancel or reschedule becomes an outbox row on channel ``ehr:<connector>``;
a conversation that needs a person becomes a row on channel ``staff``. The relay sends them with
the same leases, backoff, dead-letter and idempotency keys as WhatsApp messages, so a decision is
durable the moment it is planned, retried while the EHR is down, applied once per idempotency
key, and visible in ``bridge outbox list``. These adapters give connectors and the staff webhook
the :class:`bridge.ports.Channel` shape the relay expects, translating their errors into
"retry?" answers (STYLE.md §6).
"""

from __future__ import annotations

__all__ = ["EhrChannel", "StaffWebhookChannel", "command_from_payload", "command_payload"]

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import httpx
import orjson

from bridge.domain import (
    AppointmentRef,
    CancelAppointment,
    ConfirmAppointment,
    Event,
    FreeSlot,
    RescheduleAppointment,
    SchedulingCommand,
)
from bridge.errors import (
    ChannelConfigInvalid,
    ChannelUnavailable,
    EHRRejected,
    EHRUnavailable,
    MessageRejected,
)
from bridge.ports import Connector, Notification, SendReceipt


def command_payload(command: SchedulingCommand) -> dict[str, Any]:
    """The outbox payload of a command (JSON-able)."""
    payload: dict[str, Any] = {
        "command": command.kind,
        "command_id": command.command_id,
        "system": command.appointment.system,
        "appointment_id": command.appointment.value,
        "version": command.appointment.version,
        "patient_id": command.patient_id,
    }
    if isinstance(command, CancelAppointment):
        payload["reason"] = command.reason
    if isinstance(command, RescheduleAppointment):
        payload["slot"] = {
            "id": command.slot.id,
            "start": command.slot.start.isoformat(),
            "end": command.slot.end.isoformat(),
        }
    return payload


def command_from_payload(payload: Mapping[str, Any]) -> SchedulingCommand:
    """Inverse of :func:`command_payload`.

    Raises:
        ValueError: unknown command kind.
    """
    common: dict[str, Any] = {
        "command_id": payload["command_id"],
        "appointment": AppointmentRef(
            system=payload["system"],
            value=payload["appointment_id"],
            version=payload.get("version"),
        ),
        "patient_id": payload["patient_id"],
    }
    kind = payload["command"]
    if kind == "confirm":
        return ConfirmAppointment(**common)
    if kind == "cancel":
        return CancelAppointment(**common, reason=payload.get("reason", "pat"))
    if kind == "reschedule":
        slot = payload["slot"]
        return RescheduleAppointment(
            **common,
            slot=FreeSlot(
                id=slot["id"],
                start=datetime.fromisoformat(slot["start"]),
                end=datetime.fromisoformat(slot["end"]),
            ),
        )
    raise ValueError(f"unknown command {kind!r}")


class EhrChannel:
    """A connector seen as a channel: ``send`` applies one command in the EHR.

    ``EHRUnavailable`` becomes a retryable :class:`ChannelUnavailable`; ``EHRRejected`` a
    permanent :class:`MessageRejected` carrying the EHR's code (``AR``, ``409``).
    """

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.name = f"ehr:{connector.name}"

    async def send(self, notification: Notification) -> SendReceipt:
        """Apply the command in ``notification.content``.

        Raises:
            ChannelUnavailable: the EHR did not answer; retry.
            MessageRejected: the EHR refused; do not retry as is.
        """
        command = command_from_payload(notification.content)
        try:
            result = await self.connector.apply(command)
        except EHRUnavailable as exc:
            raise ChannelUnavailable("ehr_unavailable", str(exc)) from exc
        except EHRRejected as exc:
            code = "ehr_conflict" if exc.conflict else "ehr_rejected"
            raise MessageRejected(code, f"EHR answered {exc.code}") from exc
        if not result.applied:
            raise MessageRejected("ehr_not_applied", result.detail or result.code)
        verified = "verified" if result.verified else "unverified"
        return SendReceipt(message_id=f"ehr:{result.code or 'ok'}:{verified}")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[Event]:
        """EHR commands have no webhooks."""
        return []


class StaffWebhookChannel:
    """Posts handoff alerts as JSON to the hospital's staff system (``engine.handoff_webhook_url``).

    The body carries ids and the reason, never message text: staff open the conversation in
    their own tools (or ``bridge handoff list``).
    """

    name = "staff"

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self._url = url
        self._client = client

    async def send(self, notification: Notification) -> SendReceipt:
        """POST the alert; 2xx is success.

        Raises:
            ChannelUnavailable: connect error, timeout or 5xx.
            ChannelConfigInvalid: any other answer (wrong URL, refused).
        """
        body = orjson.dumps({"type": "bridge.handoff", **notification.content})
        try:
            response = await self._client.post(
                self._url, content=body, headers={"content-type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise ChannelUnavailable("staff_unavailable", type(exc).__name__) from exc
        if response.status_code >= 500:
            raise ChannelUnavailable("staff_unavailable", f"HTTP {response.status_code}")
        if response.status_code >= 300:
            raise ChannelConfigInvalid("staff_refused", f"HTTP {response.status_code}")
        return SendReceipt(message_id=f"staff:{response.status_code}")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[Event]:
        """The staff webhook is outbound only."""
        return []
