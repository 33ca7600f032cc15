"""Decisions back to the HIS as SRM or SIU messages over MLLP (reference ``hl7v2.md`` §2, §5).

Which message carries which decision is agreed per site (config ``outbound.confirm`` etc.):

===========  ==================  =====================================================
decision     default             alternative
===========  ==================  =====================================================
confirm      ``SRM^S03``         ``SIU^S14`` with SCH-25 = ``confirmed_status``
cancel       ``SRM^S04``         ``SIU^S15`` with SCH-25 ``Cancelled``
reschedule   ``SRM^S02``         ``SIU^S13`` with the new start/end in SCH-11
===========  ==================  =====================================================

An SRM looks like this (v2.5; RGS is mandatory even for a cancel)::

    MSH|^~\\&|BRIDGE||HIS||20240101120000||SRM^S04^SRM_S01|BRG1a2b...|P|2.5
    ARQ|36996|36996|||||pat^Cancelled by patient
    PID|||PATID1234
    RGS|1|U

The appointment id we were given (SCH-2.1 by default, else SCH-1.1) is echoed in both the
placer (ARQ-1 / SCH-1, mandatory) and filler (ARQ-2 / SCH-2) id fields: we never invent one.
Messages are built with hl7apy so every value is escaped correctly.

ACK handling: ``AA``/``CA`` → applied; ``AR``/``CR`` → :class:`bridge.errors.EHRRejected`
(never retried); ``AE``/``CE``, no answer within ``ack_timeout`` or a connection error → retried
in process with tenacity, then :class:`bridge.errors.EHRUnavailable` so the command outbox
retries later and dead-letters after its own limit.
"""

from __future__ import annotations

import hashlib

__all__ = ["MllpClient", "OutboundSender", "build_decision"]

import asyncio
import time
from datetime import datetime
from typing import Any

from hl7apy.core import Message as ApyMessage
from hl7apy.factories import datatype_factory
from structlog.typing import FilteringBoundLogger
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from bridge.domain import (
    CancelAppointment,
    CommandResult,
    ConfirmAppointment,
    RescheduleAppointment,
    SchedulingCommand,
)
from bridge.errors import EHRRejected, EHRUnavailable
from connectors.hl7v2._ack import parse_ack
from connectors.hl7v2._config import OutboundSettings

CONNECTOR = "hl7v2"
START = b"\x0b"
END = b"\x1c\r"


def control_id_for(command: SchedulingCommand) -> str:
    """MSH-10 of a decision: derived from the command id, so the same decision resent after a
    crash (its outbox row was still leased) carries the same control id and the HIS can
    recognise the duplicate, as HIS interfaces dedupe on MSH-10. 20 characters: the HL7 ST
    length of MSH-10 in v2.3-2.5."""
    digest = hashlib.sha256(command.command_id.encode()).hexdigest()
    return f"BRG{digest[:17].upper()}"


class _NoAnswer(Exception):
    """No ACK (timeout, closed connection, wrong MSA-2): worth another try."""


class _ErrorAck(Exception):
    """The HIS answered AE/CE: worth another try."""

    def __init__(self, code: str) -> None:
        self.code = code
        super().__init__(code)


def _put(parent: Any, index: int, value: str, version: str) -> None:
    """Set component ``index`` of field ``parent`` with full escaping.

    hl7apy escapes ``| ^ & ~ \\`` only when the value is given as a typed datatype object; a
    plain string assigned to a component leaves ``&`` unescaped. Component names follow the
    field's type, which changes between versions (CE in 2.5, CWE in 2.8).
    """
    name = f"{parent.datatype.lower()}_{index}"
    datatype = getattr(parent, name).datatype
    setattr(parent, name, datatype_factory(datatype, value, version=version))


def _hl7_time(value: datetime) -> str:
    return value.strftime("%Y%m%d%H%M%S%z")


def build_decision(command: SchedulingCommand, settings: OutboundSettings) -> tuple[str, str]:
    """Build the message for ``command``.

    Returns:
        the ER7 text (segments end with ``\\r``) and its MSH-10.

    Raises:
        EHRRejected: the command kind has no configured message.
    """
    if isinstance(command, ConfirmAppointment):
        kind = settings.confirm
        reason, reason_text, status = "CONFIRM", "Confirmed by patient", settings.confirmed_status
    elif isinstance(command, CancelAppointment):
        kind = settings.cancel
        reason, reason_text, status = command.reason, "Cancelled by patient", "Cancelled"
    elif isinstance(command, RescheduleAppointment):
        kind = settings.reschedule
        reason, reason_text, status = "RESCHEDULE", "Reschedule requested by patient", "Booked"
    else:
        raise EHRRejected(CONNECTOR, "unsupported", f"no HL7 message for {command.kind}")
    family, event = kind.split("^")
    version = settings.version
    control_id = control_id_for(command)
    structure = "SRM_S01" if family == "SRM" else "SIU_S12"
    msg = ApyMessage(structure, version=version)
    msh = msg.msh
    _put(msh.msh_3, 1, settings.sending_application, version)
    if settings.sending_facility:
        _put(msh.msh_4, 1, settings.sending_facility, version)
    if settings.receiving_application:
        _put(msh.msh_5, 1, settings.receiving_application, version)
    if settings.receiving_facility:
        _put(msh.msh_6, 1, settings.receiving_facility, version)
    msh.msh_7 = time.strftime("%Y%m%d%H%M%S")
    msh.msh_9 = f"{family}^{event}^{structure}"
    msh.msh_10 = control_id
    msh.msh_11 = settings.processing_id
    appointment_id = command.appointment.value
    slot = command.slot if isinstance(command, RescheduleAppointment) else None
    if family == "SRM":
        arq = msg.add_segment("ARQ")
        _put(arq.arq_1, 1, appointment_id, version)
        _put(arq.arq_2, 1, appointment_id, version)
        _put(arq.arq_6, 1, reason, version)
        _put(arq.arq_6, 2, reason_text, version)
        if slot is not None:
            arq.arq_11.dr_1 = _hl7_time(slot.start)
            arq.arq_11.dr_2 = _hl7_time(slot.end)
        patient_group = msg.add_group("SRM_S01_PATIENT")
        resources = msg.add_group("SRM_S01_RESOURCES")
    else:
        sch = msg.add_segment("SCH")
        _put(sch.sch_1, 1, appointment_id, version)
        _put(sch.sch_2, 1, appointment_id, version)
        _put(sch.sch_6, 1, reason, version)
        _put(sch.sch_6, 2, reason_text, version)
        if slot is not None and version in ("2.3", "2.3.1", "2.4"):
            sch.sch_11.tq_4 = _hl7_time(slot.start)
            sch.sch_11.tq_5 = _hl7_time(slot.end)
        _put(sch.sch_25, 1, status, version)
        if slot is not None and version not in ("2.3", "2.3.1", "2.4"):
            # SCH-11 gave way to TQ1 in 2.5 and is gone by 2.7
            tq1 = msg.add_segment("TQ1")
            tq1.tq1_7 = _hl7_time(slot.start)
            tq1.tq1_8 = _hl7_time(slot.end)
        patient_group = msg.add_group("SIU_S12_PATIENT")
        resources = msg.add_group("SIU_S12_RESOURCES")
    pid = patient_group.add_segment("PID")
    _put(pid.pid_3, 1, command.patient_id, version)
    rgs = resources.add_segment("RGS")
    rgs.rgs_1 = "1"
    rgs.rgs_2 = "U"
    return msg.to_er7() + "\r", control_id


class MllpClient:
    """One persistent MLLP connection to the HIS, reopened after any failure.

    Exchanges are serialised: HIS interfaces expect one message in flight at a time.
    """

    def __init__(self, settings: OutboundSettings) -> None:
        self.settings = settings
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    async def exchange(self, payload: bytes) -> bytes:
        """Send one message and return the answer block (unframed).

        Raises:
            _NoAnswer: connect failure, timeout, or the HIS closed the connection.
        """
        async with self._lock:
            try:
                if self._writer is None or self._writer.is_closing():
                    self._reader, self._writer = await asyncio.wait_for(
                        asyncio.open_connection(
                            self.settings.host,
                            self.settings.port,
                            ssl=self.settings.ssl_context,
                            limit=4 * 1024 * 1024,
                        ),
                        self.settings.connect_timeout,
                    )
                reader, writer = self._reader, self._writer
                assert reader is not None and writer is not None  # noqa: S101 - set above
                writer.write(START + payload + END)
                await writer.drain()
                block = await asyncio.wait_for(reader.readuntil(END), self.settings.ack_timeout)
            except (
                OSError,
                TimeoutError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ) as exc:
                await self._drop()
                raise _NoAnswer(type(exc).__name__) from exc
            start = block.find(START)
            return block[start + 1 : -2] if start >= 0 else block[:-2]

    async def _drop(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass

    async def close(self) -> None:
        """Close the connection."""
        async with self._lock:
            await self._drop()


class OutboundSender:
    """Builds, sends and retries decision messages; maps ACKs to results and errors."""

    def __init__(self, settings: OutboundSettings, log: FilteringBoundLogger) -> None:
        self.settings = settings
        self.client = MllpClient(settings)
        self.log = log.bind(connector=CONNECTOR)

    async def apply(self, command: SchedulingCommand) -> CommandResult:
        """Send ``command`` and wait for the HIS's acknowledgement.

        Raises:
            EHRRejected: ``AR``/``CR``, or a command we cannot express.
            EHRUnavailable: no ACK or ``AE``/``CE`` after the in-process tries.
        """
        text, control_id = build_decision(command, self.settings)
        payload = text.encode("utf-8")
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.max_attempts),
            wait=wait_exponential(multiplier=self.settings.retry_wait, max=5),
            retry=retry_if_exception_type((_NoAnswer, _ErrorAck)),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    code = await self._attempt(payload, control_id, command)
        except _NoAnswer as exc:
            self.log.warning(
                "hl7v2.outbound_no_ack", command_id=command.command_id, message_id=control_id
            )
            raise EHRUnavailable(CONNECTOR, f"no ACK for {control_id} ({exc})") from exc
        except _ErrorAck as exc:
            self.log.warning(
                "hl7v2.outbound_error_ack", command_id=command.command_id, message_id=control_id
            )
            raise EHRUnavailable(CONNECTOR, f"{exc.code} for {control_id} after retries") from exc
        self.log.info(
            "hl7v2.outbound_applied",
            command_id=command.command_id,
            message_id=control_id,
            code=code,
        )
        return CommandResult(
            applied=True, verified=False, code=code, detail=f"ACK for {control_id}"
        )

    async def _attempt(self, payload: bytes, control_id: str, command: SchedulingCommand) -> str:
        answer = await self.client.exchange(payload)
        try:
            code, acked_id, _text = parse_ack(answer)
        except ValueError as exc:
            await self.client.close()
            raise _NoAnswer("unreadable ACK") from exc
        if acked_id != control_id:
            await self.client.close()
            raise _NoAnswer("ACK for another message")
        if code in ("AA", "CA"):
            return code
        if code in ("AR", "CR"):
            self.log.warning(
                "hl7v2.outbound_rejected",
                command_id=command.command_id,
                message_id=control_id,
                code=code,
            )
            # MSA-3 text may carry patient data: only the code travels
            raise EHRRejected(CONNECTOR, code, f"HIS rejected {control_id}")
        raise _ErrorAck(code or "no code")

    async def close(self) -> None:
        """Close the MLLP connection."""
        await self.client.close()
