"""Small readers for FHIR datatypes as decoded JSON: instants, references, canonical JSON.

Implements the parts of ../shared/reference/fhir.md §1.1 (``instant`` must carry its offset) and
§2.1 (notification references are absolute URLs) the translator and client both need.
"""

from __future__ import annotations

__all__ = ["Ref", "canonical_json", "message_id", "parse_datetime", "parse_reference"]

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import orjson

#: ``[base/]Type/id[/_history/vid]``; FHIR ids are 1-64 of ``[A-Za-z0-9\-.]``.
_REFERENCE = re.compile(
    r"^(?:(?P<base>https?://\S+?)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?$"
)
#: More than 6 fractional digits (``.1882432``) are legal FHIR but not for ``fromisoformat``.
_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")


@dataclass(frozen=True, kw_only=True, slots=True)
class Ref:
    """A parsed literal reference. ``base`` is None for relative references."""

    type: str
    id: str
    base: str | None = None
    version: str | None = None

    @property
    def relative(self) -> str:
        """``Type/id``."""
        return f"{self.type}/{self.id}"


def parse_reference(value: Any) -> Ref | None:
    """Parse ``Type/id``, ``http(s)://base/Type/id`` or with ``/_history/vid``; None otherwise."""
    if not isinstance(value, str):
        return None
    match = _REFERENCE.match(value.strip())
    if match is None:
        return None
    return Ref(type=match["type"], id=match["id"], base=match["base"], version=match["version"])


def parse_datetime(value: Any, tz: tzinfo | None) -> datetime | None:
    """Read a FHIR instant/dateTime; a value without offset takes ``tz``; unreadable → None.

    A date-only value (``2013-10-10``) or a naive value with no ``tz`` also gives None: the
    bridge never guesses a zone (DESIGN.md §4).
    """
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        parsed = datetime.fromisoformat(_LONG_FRACTION.sub(r"\1", value.strip()))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        if tz is None:
            return None
        parsed = parsed.replace(tzinfo=tz)
    return parsed


def canonical_json(resource: Mapping[str, Any]) -> bytes:
    """The bytes the bridge stores for one resource: sorted keys, so re-reads hash the same."""
    return orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)


def message_id(resource: Mapping[str, Any]) -> str:
    """``Type/id/_history/vid`` (the FHIR dedupe key), or ``Type/id`` when there is no version."""
    rtype = str(resource.get("resourceType") or "Resource")
    rid = str(resource.get("id") or "")
    meta = resource.get("meta")
    version = meta.get("versionId") if isinstance(meta, Mapping) else None
    if version:
        return f"{rtype}/{rid}/_history/{version}"
    return f"{rtype}/{rid}"
