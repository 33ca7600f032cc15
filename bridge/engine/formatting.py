"""Turning canonical values into strings WhatsApp accepts: dates, names, placeholders, limits.

Implements the parameter rules of reference whatsapp.md §1.2-§1.4 on the rendering side:

* a template body parameter must not hold newlines, tabs or more than four consecutive spaces
  (Meta answers 132000-family errors), so every rendered value has its whitespace collapsed to
  single spaces and its control characters removed;
* empty parameters are refused by Meta (131008), so an empty value is reported as ``None`` and
  the caller falls back or raises :class:`~bridge.errors.MappingError`;
* display strings are capped with an ellipsis (``…``); strings that are part of a contract
  (payloads, URL suffixes) are never altered, only refused.

Dates and times go through babel in the patient's locale and the clinic's time zone::

    >>> style = DateStyle(locale="es_CO")
    >>> format_date(datetime(2024, 11, 6, 14, 0, tzinfo=UTC), "America/Bogota", style)
    'miércoles, 6 de noviembre de 2024'

Free-text messages use ``{field.name}`` placeholders (:func:`placeholders`, :func:`interpolate`);
templates use Meta's own ``{{1}}`` placeholders (:func:`template_placeholders`).
"""

from __future__ import annotations

__all__ = [
    "ELLIPSIS",
    "DateStyle",
    "PlaceholderSyntaxError",
    "clean_text",
    "first_word",
    "format_date",
    "format_short_date",
    "format_time",
    "interpolate",
    "placeholders",
    "resolve_zone",
    "template_placeholders",
    "truncate",
]

import functools
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_date as babel_format_date
from babel.dates import format_datetime as babel_format_datetime
from babel.dates import format_time as babel_format_time

from bridge.errors import MappingError

#: Appended to a display string cut to fit a limit.
ELLIPSIS = "…"

#: ``{appointment.date}`` in free texts; a field name is dotted lowercase words.
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_FIELD_NAME = re.compile(r"[a-z][a-z0-9_]*(\.[a-z*][a-z0-9_]*)+|[a-z][a-z0-9_]*")
#: Meta's positional template placeholders, ``{{1}}``.
_TEMPLATE_PLACEHOLDER = re.compile(r"\{\{\s*(\d+)\s*\}\}")
#: Unicode categories removed from rendered values: controls, surrogates, unassigned, private use.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cs", "Cn", "Co"})


class PlaceholderSyntaxError(ValueError):
    """A free text has a brace that is not part of a ``{field}`` placeholder."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DateStyle:
    """How dates and times are written for one language.

    Attributes:
        locale: babel locale id (``es_CO``, ``en_US``).
        date_format: babel ``format_date`` format (``short``/``medium``/``long``/``full`` or a
            CLDR pattern); ``full`` reads well in a sentence ("miércoles, 6 de noviembre de 2024").
        short_date_format: CLDR pattern for list rows, which hold 24 characters with the time
            (``EEE d MMM`` gives "mié 6 nov").
        time_format: babel ``format_time`` format (``short`` gives "2:00 p. m." / "2:00 PM").
    """

    locale: str
    date_format: str = "full"
    short_date_format: str = "EEE d MMM"
    time_format: str = "short"

    def check(self) -> list[tuple[str, str]]:
        """Try every format once; return ``(key, reason)`` for each that does not work."""
        problems: list[tuple[str, str]] = []
        try:
            _locale(self.locale)
        except (UnknownLocaleError, ValueError, TypeError):
            return [("locale", f"unknown locale {self.locale!r} (use e.g. es_CO, en_US)")]
        sample = datetime(2024, 11, 6, 14, 0, tzinfo=ZoneInfo("UTC"))
        checks: tuple[tuple[str, Callable[[], str]], ...] = (
            ("date_format", lambda: babel_format_date(sample, self.date_format, self.locale)),
            (
                "short_date_format",
                lambda: babel_format_datetime(sample, self.short_date_format, locale=self.locale),
            ),
            (
                "time_format",
                lambda: babel_format_time(sample, self.time_format, locale=self.locale),
            ),
        )
        for key, attempt in checks:
            try:
                if not attempt().strip():
                    problems.append((key, "renders an empty string"))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                problems.append((key, f"not a usable babel format ({type(exc).__name__})"))
        return problems


@functools.lru_cache(maxsize=64)
def _locale(identifier: str) -> Locale:
    return Locale.parse(identifier)


@functools.lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def resolve_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``.

    Raises:
        MappingError: the zone is unknown or malformed (named, it is configuration, not PHI).
    """
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError) as exc:
        # OSError: some malformed keys reach the file system lookup before being refused.
        raise MappingError("timezone", f"unknown time zone {name[:64]!r}") from exc


def _local(moment: datetime, zone: str) -> datetime:
    tz = resolve_zone(zone)
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise MappingError("datetime", "naive datetime; events carry aware times")
    try:
        return moment.astimezone(tz)
    except (OverflowError, ValueError) as exc:
        raise MappingError("datetime", "time cannot be shown in the clinic's zone") from exc


def format_date(moment: datetime, zone: str, style: DateStyle) -> str:
    """The calendar date of ``moment`` in ``zone``, written for ``style.locale``.

    Raises:
        MappingError: unknown zone, naive or out-of-range datetime.
    """
    local = _local(moment, zone)
    return str(babel_format_date(local.date(), style.date_format, locale=_locale(style.locale)))


def format_short_date(moment: datetime, zone: str, style: DateStyle) -> str:
    """A short date ("mié 6 nov") for list rows.

    Raises:
        MappingError: unknown zone, naive or out-of-range datetime.
    """
    local = _local(moment, zone)
    return str(
        babel_format_datetime(
            local, style.short_date_format, tzinfo=local.tzinfo, locale=_locale(style.locale)
        )
    )


def format_time(moment: datetime, zone: str, style: DateStyle) -> str:
    """The wall-clock time of ``moment`` in ``zone`` ("2:00 p. m.").

    Raises:
        MappingError: unknown zone, naive or out-of-range datetime.
    """
    local = _local(moment, zone)
    # format_time on an aware datetime would convert again; give it the local wall time.
    return str(
        babel_format_time(
            local.replace(tzinfo=None), style.time_format, locale=_locale(style.locale)
        )
    )


def clean_text(value: str) -> str:
    """Make ``value`` safe as one WhatsApp parameter line.

    Control, surrogate, unassigned and private-use characters are dropped; every run of
    whitespace (newlines, tabs, babel's narrow no-break spaces included) becomes one space; the
    ends are stripped. The result may be empty.
    """
    # Whitespace first (tabs and newlines are control characters too, but separate words).
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in value
        if ch.isspace() or unicodedata.category(ch) not in _DROPPED_CATEGORIES
    )
    return " ".join(kept.split())


def truncate(value: str, limit: int) -> str:
    """``value`` cut to at most ``limit`` characters, ending in ``…`` when cut.

    Args:
        value: a display string (never a payload or token: those are refused, not cut).
        limit: maximum length, at least 1.
    """
    if len(value) <= limit:
        return value
    return value[: max(limit - 1, 0)].rstrip() + ELLIPSIS


def first_word(value: str | None) -> str | None:
    """The first word of a cleaned name ("María José" → "María"), or None when there is none."""
    if value is None:
        return None
    words = clean_text(value).split(" ")
    return words[0] or None


def placeholders(text: str) -> list[str]:
    """The ``{field}`` names in a free text, in order (duplicates kept).

    Raises:
        PlaceholderSyntaxError: a stray ``{`` or ``}``, or a placeholder that is not a field name.
    """
    names: list[str] = []
    for match in _PLACEHOLDER.finditer(text):
        name = match.group(1).strip()
        if not _FIELD_NAME.fullmatch(name):
            raise PlaceholderSyntaxError(f"{{{match.group(1)}}} is not a field name")
        names.append(name)
    rest = _PLACEHOLDER.sub("", text)
    if "{" in rest or "}" in rest:
        raise PlaceholderSyntaxError("unbalanced brace")
    return names


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """Replace every ``{field}`` in ``text`` by ``values[field]``.

    A value ending in a period followed by a period in the text loses one of them, so
    "a las {appointment.time}." reads "a las 9:30 p. m." and not "p. m..".

    The caller resolved every name :func:`placeholders` returned; a missing one raises KeyError,
    which is a programming error, not bad input.
    """

    def replace(match: re.Match[str]) -> str:
        value = values[match.group(1).strip()]
        if value.endswith(".") and text.startswith(".", match.end()):
            return value[:-1]
        return value

    return _PLACEHOLDER.sub(replace, text)


def template_placeholders(text: str) -> list[int]:
    """The distinct ``{{n}}`` numbers of a template text, in order of first appearance."""
    return list(dict.fromkeys(int(n) for n in _TEMPLATE_PLACEHOLDER.findall(text)))
