"""HL7 v2 date/time values (DTM/TS) to timezone-aware datetimes (reference ``hl7v2.md`` §0.11, §1.2).

HL7 times have variable precision (``2021``, ``202104270815``, ``20210924093000.1234``) and an
optional offset (``+0215``). Most real senders send local time without an offset, so the
interface's configured zone is applied when there is none: every datetime that leaves here is
timezone-aware. Durations (SCH-9/10, ``M30`` in SCH-11.3, ``50^min`` in AIS-7/8) become
:class:`datetime.timedelta`.
"""

from __future__ import annotations

__all__ = ["parse_dtm", "parse_duration"]

import functools
import re
from datetime import datetime, timedelta, timezone, tzinfo

_DTM = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:([+-])(\d{2})(\d{2}))?"
)


def parse_dtm(value: str, zone: tzinfo) -> datetime | None:
    """Parse an HL7 DTM; ``zone`` is used when the value carries no offset.

    Returns:
        the datetime, or None for an empty value.

    Raises:
        ValueError: the value is not a DTM or names an impossible date.
    """
    value = value.strip()
    if not value or value == '""':
        return None
    return _parse_dtm(value, zone)


@functools.lru_cache(maxsize=4096)
def _parse_dtm(value: str, zone: tzinfo) -> datetime:
    """The parse itself, cached: a feed repeats the same values (MSH-7 within a second, the
    clinic's slot times), and a datetime is immutable. Failures raise again every time."""
    m = _DTM.fullmatch(value)
    if m is None:
        raise ValueError("not an HL7 date/time")
    year, month, day, hour, minute, second, frac, sign, oh, om = m.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    if sign is not None:
        delta = timedelta(hours=int(oh), minutes=int(om))
        tz: tzinfo = timezone(-delta if sign == "-" else delta)
    else:
        tz = zone
    naive = datetime(
        int(year),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micro,
    )
    # with a ZoneInfo, the offset (and DST) is resolved for the wall-clock time
    return naive.replace(tzinfo=tz)


#: duration unit spellings seen in SCH-10 / AIS-8 (CE identifier or text), in seconds
_UNITS: dict[str, int] = {
    "S": 1,
    "SEC": 1,
    "SECS": 1,
    "SECOND": 1,
    "SECONDS": 1,
    "M": 60,
    "MIN": 60,
    "MINS": 60,
    "MINUTE": 60,
    "MINUTES": 60,
    "H": 3600,
    "HR": 3600,
    "HRS": 3600,
    "HOUR": 3600,
    "HOURS": 3600,
    "D": 86400,
    "DAY": 86400,
    "DAYS": 86400,
}

_TQ_DURATION = re.compile(r"([SMHDW])(\d+(?:\.\d+)?)")


def parse_duration(amount: str, unit: str = "") -> timedelta | None:
    """A duration from an amount and a unit (``60`` + ``MIN``); bare numbers are minutes.

    Also reads the TQ form ``M30`` / ``H1`` when ``unit`` is empty. Returns None when the
    values cannot be read or are not positive.
    """
    amount = amount.strip()
    if not amount:
        return None
    if not unit:
        m = _TQ_DURATION.fullmatch(amount.upper())
        if m is not None:
            code, number = m.groups()
            scale = {"S": 1, "M": 60, "H": 3600, "D": 86400, "W": 604800}[code]
            return timedelta(seconds=float(number) * scale)
    try:
        number = float(amount)
    except ValueError:
        return None
    if number <= 0:
        return None
    seconds = _UNITS.get(unit.strip().upper(), 60 if not unit.strip() else 0)
    if not seconds:
        return None
    return timedelta(seconds=number * seconds)
