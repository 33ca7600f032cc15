"""FHIR R4 Patient → :class:`bridge.domain.PatientInfo`: the WhatsApp number, language and name.

Implements ../shared/reference/fhir.md §1.4 (Patient contact data). The number is chosen from
``Patient.telecom``: ``system`` phone or sms, ``use`` not ``old``, ``period`` not ended; mobile
numbers first, then by ``rank`` (1 wins, unranked after ranked), then in document order; the
first one that :mod:`phonenumbers` accepts is normalised to E.164. Trimmed example::

    {"resourceType": "Patient", "id": "f201",
     "telecom": [{"system": "phone", "value": "+31612345678", "use": "mobile"}],
     "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "nl-NL"}]},
                        "preferred": true}]}

The given name is PHI: it goes into the event only, never into a Problem or a log.
"""

from __future__ import annotations

__all__ = ["patient_info", "pick_language", "pick_phone"]

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import phonenumbers

from bridge.domain import PatientInfo, Problem

from ._values import parse_datetime

#: ``telecom.system`` values that can carry a number WhatsApp may know.
_PHONE_SYSTEMS = frozenset({"phone", "sms"})


def _candidates(telecom: Sequence[Any], now: datetime) -> list[str]:
    ranked: list[tuple[int, int, int, str]] = []
    for index, point in enumerate(telecom):
        if not isinstance(point, Mapping):
            continue
        value = point.get("value")
        if point.get("system") not in _PHONE_SYSTEMS or not isinstance(value, str) or not value:
            continue
        if point.get("use") == "old":
            continue
        period = point.get("period")
        if isinstance(period, Mapping):
            end = parse_datetime(period.get("end"), None)
            if end is not None and end < now:
                continue
        mobile = 0 if point.get("use") == "mobile" else 1
        rank = point.get("rank")
        # unranked numbers come after every ranked one (§1.4: lower rank wins)
        rank_key = rank if isinstance(rank, int) and rank > 0 else 1 << 30
        ranked.append((mobile, rank_key, index, value))
    return [value for *_, value in sorted(ranked)]


def pick_phone(
    telecom: Any, *, region: str | None, now: datetime
) -> tuple[str | None, Problem | None]:
    """Choose and normalise the patient's WhatsApp number.

    Args:
        telecom: ``Patient.telecom`` as decoded JSON (anything else counts as absent).
        region: ISO 3166 country for national numbers (``NL``, ``CO``), or None.
        now: for ``telecom.period.end``.

    Returns:
        The E.164 number or None, and a Problem saying why when None.
    """
    candidates = _candidates(telecom if isinstance(telecom, list) else [], now)
    if not candidates:
        return None, Problem(
            code="phone.missing",
            field="Patient.telecom",
            message="no current phone or sms number in Patient.telecom",
        )
    national_without_region = False
    for value in candidates:
        if not value.lstrip().startswith("+") and region is None:
            national_without_region = True
            continue
        try:
            number = phonenumbers.parse(value, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None
    if national_without_region:
        reason = "a national number cannot be read without a default region (config/--region)"
    else:
        reason = "no number in Patient.telecom is a valid phone number"
    return None, Problem(code="phone.invalid", field="Patient.telecom", message=reason)


def pick_language(communication: Any) -> tuple[str | None, Problem | None]:
    """Return the 2-letter language of ``Patient.communication`` (preferred first).

    Returns:
        The lower-case ISO 639-1 code or None, and a Problem when a language was given but
        could not be read as one.
    """
    if not isinstance(communication, list) or not communication:
        return None, None
    entries = [c for c in communication if isinstance(c, Mapping)]
    entries.sort(key=lambda c: 0 if c.get("preferred") is True else 1)
    for entry in entries:
        language = entry.get("language")
        if not isinstance(language, Mapping):
            continue
        codes = [
            c.get("code")
            for c in language.get("coding", [])
            if isinstance(c, Mapping) and isinstance(c.get("code"), str)
        ]
        for code in codes:
            primary = str(code).replace("_", "-").split("-", 1)[0].lower()
            if len(primary) == 2 and primary.isalpha() and primary.isascii():
                return primary, None
    return None, Problem(
        code="language.unknown",
        field="Patient.communication",
        message="Patient.communication has no BCP-47 code with a 2-letter language",
    )


def _given_name(names: Any) -> str | None:
    if not isinstance(names, list):
        return None
    usable = [
        n for n in names if isinstance(n, Mapping) and n.get("use") not in ("old", "anonymous")
    ]
    # official and usual names are the ones a patient recognises in a greeting
    usable.sort(key=lambda n: {"usual": 0, "official": 1}.get(str(n.get("use")), 2))
    for name in usable:
        given = name.get("given")
        if isinstance(given, list) and given and isinstance(given[0], str) and given[0].strip():
            return given[0].strip()
    return None


def patient_info(
    resource: Mapping[str, Any], *, region: str | None, now: datetime
) -> tuple[PatientInfo, list[Problem]]:
    """Build a PatientInfo from a decoded, validated Patient resource.

    Args:
        resource: the Patient as decoded JSON.
        region: default region for national numbers.
        now: for expired telecom periods.

    Returns:
        The PatientInfo and the problems met (without patient data).
    """
    problems: list[Problem] = []
    phone, problem = pick_phone(resource.get("telecom"), region=region, now=now)
    if problem is not None:
        problems.append(problem)
    language, problem = pick_language(resource.get("communication"))
    if problem is not None:
        problems.append(problem)
    info = PatientInfo(
        id=str(resource.get("id") or ""),
        phone=phone,
        language=language,
        given_name=_given_name(resource.get("name")),
    )
    return info, problems
