"""HL7 v2 acknowledgements, built by string formatting (reference ``hl7v2.md`` §5.1, §5.2).

The listener answers every frame it can read, after the sink has stored it::

    MSH|^~\\&|EHRApp|GHH|SCHApp|GHH|20240101120000||ACK^S12^ACK|B1A2...|P|2.8
    MSA|AA|MSG00012
    ERR||MSH^1^12|203^Unsupported version id^HL70357|E|||version.unsupported

MSH-3/4 and MSH-5/6 are swapped from the incoming message, MSA-2 echoes its MSH-10, and the
version, processing id and encoding characters are the sender's. Original mode (MSH-15/16
empty) answers ``AA``/``AE``/``AR``; enhanced mode (either valued) answers ``CA``/``CE``/``CR``.
ERR follows the v2.5+ layout (ERR-2 location, ERR-3 code, ERR-4 severity) and, for older
versions, the single ERR-1 field. hl7apy is not used here: this runs for every message.
"""

from __future__ import annotations

__all__ = ["AckCode", "build_ack", "parse_ack"]

import enum
import itertools
import os
import time

from connectors.hl7v2._segments import DEFAULT_SEPARATORS, Separators, escape, parse_message
from connectors.hl7v2._translate import SUPPORTED_VERSIONS, Header


class AckCode(enum.Enum):
    """What we tell the sender; the wire code depends on the acknowledgement mode."""

    ACCEPT = ("AA", "CA")
    ERROR = ("AE", "CE")
    REJECT = ("AR", "CR")

    def wire(self, enhanced: bool) -> str:
        """``AA``/``AE``/``AR`` in original mode, ``CA``/``CE``/``CR`` in enhanced mode."""
        return self.value[1] if enhanced else self.value[0]


#: table 0357 codes for the reasons we reject (everything else: 207 application error)
_HL7_ERROR_CODES: dict[str, tuple[str, str]] = {
    "version.unsupported": ("203", "Unsupported version id"),
    "message.unsupported_type": ("200", "Unsupported message type"),
    "event.unsupported": ("201", "Unsupported event code"),
    "message.unreadable_header": ("100", "Segment sequence error"),
    "message.not_hl7": ("100", "Segment sequence error"),
    "charset.invalid": ("102", "Data type error"),
    "frame.too_large": ("207", "Application internal error"),
    "store.unavailable": ("207", "Application internal error"),
}

_VERSIONS_WITH_ERL = ("2.5", "2.6", "2.7", "2.8")

_counter = itertools.count(1)
#: a per-process prefix keeps ACK control ids unique across restarts without a clock call
_PREFIX = f"B{os.getpid() % 100000:05d}{int(time.time()) % 1000000:06d}"
_last_second = 0
_last_stamp = ""


#: MSA-2 echoes MSH-10, whose longest legal form (v2.7+) is 199 characters: a sender's
#: megabyte-long "control id" is not sent back whole.
_MAX_CONTROL_ID = 199


def _stamp() -> str:
    global _last_second, _last_stamp
    now = int(time.time())
    if now != _last_second:
        _last_second = now
        _last_stamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now))
    return _last_stamp


def build_ack(
    header: Header | None,
    code: AckCode,
    *,
    reason_code: str | None = None,
    text: str | None = None,
    where: str | None = None,
    application: str = "BRIDGE",
    facility: str = "",
) -> bytes:
    """Build the ACK for one incoming message, unframed, as bytes.

    Args:
        header: the incoming MSH fields, or None when the MSH could not be read (then the
            ACK names us as sender and MSA-2 is empty, as HAPI does).
        code: accept, error or reject.
        reason_code: our problem code (``version.unsupported``) for the ERR segment.
        text: a short reason without patient data (MSA-3 / ERR-8).
        where: the field the error is about (``MSH-12``).
        application: our MSH-3 when ``header`` is None.
        facility: our MSH-4 when ``header`` is None.
    """
    seps = header.seps if header is not None else DEFAULT_SEPARATORS
    f = seps.field
    if header is not None:
        enhanced = bool(header.accept_ack_type or header.application_ack_type)
        # an unsupported version is answered in 2.5 so the ERR layout is one we know
        version = header.version if header.version in SUPPORTED_VERSIONS else "2.5"
        event = header.event
        msh = (
            f"MSH{f}{seps.encoding_characters}{f}{header.receiving_application}{f}"
            f"{header.receiving_facility}{f}{header.sending_application}{f}{header.sending_facility}{f}"
            f"{_stamp()}{f}{f}{_message_type(event, version, seps)}{f}{_PREFIX}{next(_counter)}{f}"
            f"{header.processing_id or 'P'}{f}{version}"
        )
        control = escape(header.control_id[:_MAX_CONTROL_ID], seps)
    else:
        enhanced = False
        version = "2.5"
        msh = (
            f"MSH{f}{seps.encoding_characters}{f}{escape(application, seps)}{f}{escape(facility, seps)}"
            f"{f}{f}{f}{_stamp()}{f}{f}ACK{f}{_PREFIX}{next(_counter)}{f}P{f}{version}"
        )
        control = ""
    segments = [msh]
    msa = f"MSA{f}{code.wire(enhanced)}{f}{control}"
    if text:
        msa += f"{f}{escape(text, seps)}"
    segments.append(msa)
    if code is not AckCode.ACCEPT:
        segments.append(_err(reason_code or "", text or "", where, version, seps))
    # the header fields were read from the raw bytes as Latin-1, so Latin-1 gives them back
    # byte for byte whatever the sender's charset
    return ("\r".join(segments) + "\r").encode("latin-1", errors="replace")


def _message_type(event: str, version: str, seps: Separators) -> str:
    c = seps.component
    if not event:
        return "ACK"
    if version.startswith(_VERSIONS_WITH_ERL):
        return f"ACK{c}{escape(event, seps)}{c}ACK"
    return f"ACK{c}{escape(event, seps)}"


def _err(reason_code: str, text: str, where: str | None, version: str, seps: Separators) -> str:
    f, c, s = seps.field, seps.component, seps.subcomponent
    hl7_code, hl7_text = _HL7_ERROR_CODES.get(reason_code, ("207", "Application internal error"))
    segment, _, field_no = (where or "").partition("-")
    field_no = field_no.split(".")[0]
    if version.startswith(_VERSIONS_WITH_ERL):
        location = f"{escape(segment, seps)}{c}1{c}{escape(field_no, seps)}" if segment else ""
        return (
            f"ERR{f}{f}{location}{f}{hl7_code}{c}{hl7_text}{c}HL70357{f}E{f}"
            f"{escape(reason_code, seps)}{f}{f}{f}{escape(text, seps)}"
        )
    # v2.1-2.4: ERR-1 = segment^sequence^field^code&text
    return f"ERR{f}{escape(segment, seps)}{c}1{c}{escape(field_no, seps)}{c}{hl7_code}{s}{hl7_text}"


def parse_ack(data: bytes) -> tuple[str, str, str]:
    """Read an ACK's MSA-1 code, MSA-2 control id and MSA-3 text (all trimmed, upper code).

    Raises:
        ValueError: no MSH or no MSA segment.
    """
    text = data.strip(b"\x0b\x1c\r\n").replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    message = parse_message(text.decode("latin-1"))
    msa = message.first("MSA")
    if msa is None:
        raise ValueError("the answer has no MSA segment")
    return msa.get(1).strip().upper(), msa.get(2).strip(), msa.get(3).strip()
