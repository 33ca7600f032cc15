"""Pick the patient's WhatsApp number from PID-13/14/40 (reference ``hl7v2.md`` §1.6, §4).

XTN repetitions are ranked: cell phones first (XTN-3 ``CP`` or a use code such as ``MOBILE``),
then other telephones; e-mail, fax and pager entries are skipped. The number is XTN-1 (free
text), else XTN-12 (unformatted), else XTN-5/6/7 (country, area, local). It is normalised to
E.164 with ``phonenumbers`` and the interface's default region. ``""`` (HL7 "delete") clears the
stored number. Invalid or placeholder numbers such as ``(000)000-0000`` give no phone and a
``phone.invalid`` problem. Nothing here logs: numbers are PHI.
"""

from __future__ import annotations

__all__ = ["PhoneChoice", "choose_phone"]

import functools
from dataclasses import dataclass

import phonenumbers

from connectors.hl7v2._segments import Segment, component

#: XTN-2 use codes and XTN-3 equipment codes that mean "mobile"
_CELL = frozenset({"CP", "MOBILE", "CELL", "CELLULAR", "MOB", "MOBIL", "MOVIL", "PRS"})
#: entries that are not telephones we could message
_NOT_PHONE = frozenset({"NET", "INTERNET", "X.400", "EMAIL", "E-MAIL", "FX", "FAX", "BP", "BPN"})


@dataclass(frozen=True, slots=True)
class PhoneChoice:
    """The outcome: an E.164 number, a cleared flag, or the reason there is neither."""

    phone: str | None = None
    cleared: bool = False
    invalid_field: str | None = None


def _number(rep: str, seg: Segment) -> str:
    seps = seg.seps
    first = component(rep, 1, 1, seps).strip()
    if first:
        return first
    unformatted = component(rep, 12, 1, seps).strip()
    if unformatted:
        return unformatted
    country = component(rep, 5, 1, seps).strip()
    area = component(rep, 6, 1, seps).strip()
    local = component(rep, 7, 1, seps).strip()
    if not local:
        return ""
    prefix = f"+{country.lstrip('+')}" if country else ""
    return f"{prefix}{area}{local}"


@functools.lru_cache(maxsize=8192)
def _e164(number: str, region: str | None) -> str | None:
    """E.164 form of ``number``, None when invalid.

    Cached: ``phonenumbers`` costs about 0.25 ms a number, two thirds of a translation, and
    feeds repeat the same patients (ADT, SIU and ORU for one visit).
    """
    count = sum(ch.isdigit() for ch in number)
    if count < 7 or count > 17:
        return None  # cannot be a real number; spares the parser
    digits = number.strip()
    if digits.startswith("00"):
        digits = "+" + digits[2:]
    try:
        parsed = phonenumbers.parse(digits, None if digits.startswith("+") else region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def choose_phone(pid: Segment, region: str | None) -> PhoneChoice:
    """Choose and normalise the best phone number in ``pid``.

    Args:
        pid: the PID segment.
        region: ISO 3166 region for numbers written without a country code (``US``, ``CO``).
    """
    seps = pid.seps
    cells: list[tuple[str, str]] = []
    others: list[tuple[str, str]] = []
    cleared = False
    for field_no in (13, 14, 40):
        raw = pid.raw(field_no)
        if not raw:
            continue
        where = f"PID-{field_no}"
        for rep in raw.split(seps.repetition):
            use = component(rep, 2, 1, seps).strip().upper()
            kind = component(rep, 3, 1, seps).strip().upper()
            if use in _NOT_PHONE or kind in _NOT_PHONE:
                continue
            number = _number(rep, pid)
            if number == '""':
                cleared = True
                continue
            if not number or "@" in number:
                continue
            bucket = cells if (kind in _CELL or use in _CELL) else others
            bucket.append((number, where))
    candidates = cells + others
    for number, _where in candidates:
        phone = _e164(number, region)
        if phone is not None:
            return PhoneChoice(phone=phone)
    if candidates:
        return PhoneChoice(invalid_field=candidates[0][1])
    return PhoneChoice(cleared=cleared)
