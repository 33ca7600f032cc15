"""The simulated HIS of ``bridge demo``: it books appointments and reports results over MLLP.

Two halves, both real sockets on loopback (reference ``hl7v2.md`` §2, MLLP framing
``<VT> message <FS><CR>``):

- :class:`MllpSender` is the HIS's outbound interface: one persistent connection to the bridge's
  MLLP listener, one message at a time, waiting for each ACK (how most HIS interfaces send).
- :class:`SimulatedHis` is the HIS's inbound interface: an MLLP server that records every
  decision the bridge writes back (``SRM^S03`` confirm, ``SRM^S04`` cancel) and answers ``AA``.

The builders :func:`siu_s12` and :func:`oru_r01` write the messages the demo sends (reference
``hl7v2.md`` §3 SIU, §4 ORU). A trimmed example of what :func:`siu_s12` writes::

    MSH|^~\\&|DEMOHIS|CLINICA|BRIDGE|CLINICA|20261122080000||SIU^S12^SIU_S12|DEMO-S12-1|P|2.5
    SCH|DEMO-1001^HIS|DEMO-1001^HIS|||||ROUTINE||30|MIN|^^30^20261123090000^20261123093000|...
    TQ1|1||||||20261123090000|20261123093000
    PID|1||DEMO-MRN-1^^^HIS^MR||TORRES^JULIAN||19800101|U|||||^PRN^CP^^^^^^^^^+573001230601|||es
    AIL|1|A|SEDE^^^CLINICA^^^^^Sede Norte|||20261123090000|||30|MIN

Everything here is synthetic: invented names, fictional ``+57300123xxxx`` numbers.
"""

from __future__ import annotations

__all__ = ["DemoPatient", "HisMessage", "MllpSender", "SimulatedHis", "oru_r01", "siu_s12"]

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

#: MLLP framing bytes (reference hl7v2.md §2).
VT, FS, CR = b"\x0b", b"\x1c", b"\r"
#: The end of every MLLP frame.
_END = FS + CR
#: Largest frame the simulated HIS accepts; the bridge's decisions are a few hundred bytes.
_MAX_FRAME = 1 << 20


@dataclass(frozen=True, kw_only=True, slots=True)
class DemoPatient:
    """A synthetic patient as the HIS knows them (invented name, fictional number)."""

    mrn: str
    given: str
    family: str
    phone: str
    language: str = "es"

    @property
    def name(self) -> str:
        """Given and family name, for the demo's own display (never logged)."""
        return f"{self.given} {self.family}"


@dataclass(frozen=True, kw_only=True, slots=True)
class HisMessage:
    """One HL7 message the simulated HIS received from the bridge."""

    text: str
    received: float = field(default_factory=time.monotonic)

    @property
    def message_type(self) -> str:
        """MSH-9 as ``TYPE^EVENT`` (``SRM^S03``)."""
        fields = self.text.split("\r", 1)[0].split("|")
        parts = fields[8].split("^") if len(fields) > 8 else []
        return "^".join(parts[:2])

    @property
    def control_id(self) -> str:
        """MSH-10."""
        fields = self.text.split("\r", 1)[0].split("|")
        return fields[9] if len(fields) > 9 else ""

    def mentions(self, value: str) -> bool:
        """Whether an identifier (an appointment id) appears in the message."""
        return value in self.text


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


def _frame(segments: list[str]) -> bytes:
    return VT + "\r".join(segments).encode() + CR + FS + CR


def _pid(patient: DemoPatient) -> str:
    # PID-13 telecom: the number in XTN-12 (unformatted), use PRN, equipment CP (cell phone).
    return (
        f"PID|1||{patient.mrn}^^^HIS^MR||{patient.family.upper()}^{patient.given.upper()}"
        f"||19800101|U|||||^PRN^CP^^^^^^^^^{patient.phone}|||{patient.language}"
    )


def siu_s12(
    *,
    control_id: str,
    appointment_id: str,
    start: datetime,
    patient: DemoPatient,
    location: str,
    sent_at: datetime,
    minutes: int = 30,
) -> bytes:
    """A framed SIU^S12 (new booking); ``start`` is clinic-local time without offset.

    Args:
        control_id: MSH-10.
        appointment_id: the filler appointment id (SCH-1, SCH-2).
        start: appointment start in the clinic's time zone (written without an offset).
        patient: who the appointment is for.
        location: the clinic's display name (AIL-3.9), the report's "clinic".
        sent_at: MSH-7.
        minutes: duration.

    Returns:
        The MLLP frame.
    """
    begin, end = _ts(start), _ts(start + timedelta(minutes=minutes))
    return _frame(
        [
            (
                f"MSH|^~\\&|DEMOHIS|CLINICA|BRIDGE|CLINICA|{_ts(sent_at)}||SIU^S12^SIU_S12"
                f"|{control_id}|P|2.5"
            ),
            (
                f"SCH|{appointment_id}^HIS|{appointment_id}^HIS|||||ROUTINE||{minutes}|MIN"
                f"|^^{minutes}^{begin}^{end}|||||||||||||Booked"
            ),
            f"TQ1|1||||||{begin}|{end}",
            _pid(patient),
            "RGS|1|A",
            f"AIL|1|A|SEDE^^^CLINICA^^^^^{location}|||{begin}|||{minutes}|MIN",
        ]
    )


def oru_r01(*, control_id: str, filler_id: str, patient: DemoPatient, sent_at: datetime) -> bytes:
    """A framed ORU^R01 with one final (``OBR-25 = F``) order.

    The bridge reads only that the order is final; the test and value are synthetic and never
    reach the patient (the notice links to the portal).
    """
    obr = ["OBR", "1", "", f"{filler_id}^LAB", "GLU^GLUCOSA^L", "", "", _ts(sent_at)]
    obr += [""] * (22 - len(obr)) + [_ts(sent_at), "", "CH", "F"]
    return _frame(
        [
            (
                f"MSH|^~\\&|DEMOLAB|CLINICA|BRIDGE|CLINICA|{_ts(sent_at)}||ORU^R01^ORU_R01"
                f"|{control_id}|P|2.5"
            ),
            _pid(patient),
            f"ORC|RE||{filler_id}^LAB",
            "|".join(obr),
            "OBX|1|NM|GLU^GLUCOSA^L||90|mg/dL|70-100|N|||F",
        ]
    )


def ack_code(ack: str) -> str:
    """MSA-1 of an ACK (``AA``, ``AE``, ``AR``), or ``"?"`` when there is none."""
    for segment in ack.split("\r"):
        if segment.startswith("MSA|"):
            return segment.split("|")[1] or "?"
    return "?"


class MllpSender:
    """The HIS's outbound interface: one connection, one message at a time, ACK awaited."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def send(self, frame: bytes) -> str:
        """Send one framed message and return the ACK's text.

        Raises:
            ConnectionError: the bridge closed the connection without answering.
            TimeoutError: no ACK within the timeout.
        """
        if self._writer is None or self._reader is None:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port), self._timeout
            )
            self._reader, self._writer = reader, writer
        else:
            reader, writer = self._reader, self._writer
        writer.write(frame)
        await writer.drain()
        try:
            reply: bytes = await asyncio.wait_for(reader.readuntil(_END), self._timeout)
        except asyncio.IncompleteReadError as exc:
            await self.aclose()
            raise ConnectionError("the bridge closed the MLLP connection") from exc
        return reply.strip(VT + FS + CR).decode("utf-8", "replace")

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class SimulatedHis:
    """The HIS's inbound interface: records what the bridge writes back and answers ``AA``.

    Args:
        on_message: called with each message as it arrives (the demo prints it).
    """

    def __init__(self, on_message: Callable[[HisMessage], None] | None = None) -> None:
        self.messages: list[HisMessage] = []
        self._on_message = on_message
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The listening port (bound on 127.0.0.1, port 0: never a collision)."""
        if self._server is None:
            raise RuntimeError("the simulated HIS is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)

    async def aclose(self) -> None:
        """Stop listening and drop open connections."""
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):
                task.cancel()
            await asyncio.gather(*self._clients, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def of_type(self, message_type: str) -> list[HisMessage]:
        """Received messages of one type (``SRM^S03``)."""
        return [m for m in self.messages if m.message_type == message_type]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            while True:
                try:
                    frame = await reader.readuntil(_END)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    break
                if len(frame) > _MAX_FRAME:
                    break
                message = HisMessage(text=frame.strip(VT + FS + CR).decode("utf-8", "replace"))
                self.messages.append(message)
                control = message.control_id
                ack = (
                    f"MSH|^~\\&|DEMOHIS|CLINICA|BRIDGE|CLINICA|{_ts(datetime.now(UTC))}||ACK"
                    f"|ACK-{control}|P|2.5\rMSA|AA|{control}"
                )
                writer.write(VT + ack.encode() + FS + CR)
                await writer.drain()
                if self._on_message is not None:
                    self._on_message(message)
        finally:
            writer.close()
            if task is not None:
                self._clients.discard(task)
