"""The patient part of a message: id, phone, language, given name, privacy (``hl7v2.md`` §1.6, §4).

- id: PID-3 (the repetition with the configured CX-5 type, else the first), else PID-2.
- phone: see :mod:`connectors.hl7v2._phone`; ``""`` clears it.
- language: PID-15 (identifier, then alternate identifier, then text) mapped to a two-letter code.
- given name: PID-5.2 (PHI: it travels in the event for templates and is never logged).
- privacy, first match wins: ``pid.deceased`` (PID-29/30), ``pd1.protection`` (PD1-12 ``Y``),
  ``pd1.publicity`` (PD1-11 ``N``/``F``), ``pv1.vip`` (PV1-16 valued), ``arv.restricted``
  (an ARV access restriction that is not being deleted).
"""

from __future__ import annotations

__all__ = ["build_patient"]

import re
from collections.abc import Mapping

from bridge.domain import PatientInfo, Problem
from connectors.hl7v2._phone import choose_phone
from connectors.hl7v2._segments import Message, Segment, component

#: PID-15 spellings to ISO 639-1; keys are upper case
_LANGUAGES: Mapping[str, str] = {
    "ENGLISH": "en", "ENG": "en", "SPANISH": "es", "SPA": "es", "ESPANOL": "es", "ESPAÑOL": "es",
    "FRENCH": "fr", "FRA": "fr", "FRE": "fr", "PORTUGUESE": "pt", "POR": "pt", "GERMAN": "de",
    "DEU": "de", "GER": "de", "ITALIAN": "it", "ITA": "it", "ARABIC": "ar", "ARA": "ar",
    "CHINESE": "zh", "ZHO": "zh", "CHI": "zh", "MANDARIN": "zh", "CANTONESE": "zh",
    "RUSSIAN": "ru", "RUS": "ru", "VIETNAMESE": "vi", "VIE": "vi", "KOREAN": "ko", "KOR": "ko",
    "JAPANESE": "ja", "JPN": "ja", "POLISH": "pl", "POL": "pl", "DUTCH": "nl", "NLD": "nl",
    "DUT": "nl", "TURKISH": "tr", "TUR": "tr", "HINDI": "hi", "HIN": "hi", "URDU": "ur",
    "URD": "ur", "TAGALOG": "tl", "TGL": "tl", "FARSI": "fa", "PERSIAN": "fa", "FAS": "fa",
    "PER": "fa", "HAITIAN CREOLE": "ht", "HAT": "ht", "GREEK": "el", "ELL": "el", "GRE": "el",
}  # fmt: skip


def _patient_id(pid: Segment, id_type: str | None) -> str:
    seps = pid.seps
    reps = [r for r in pid.reps(3) if r.strip()]
    if id_type:
        wanted = id_type.upper()
        for rep in reps:
            if component(rep, 5, 1, seps).strip().upper() == wanted:
                value = component(rep, 1, 1, seps).strip()
                if value:
                    return value
    for rep in reps:
        value = component(rep, 1, 1, seps).strip()
        if value and value != '""':
            return value
    value = pid.get(2, 1).strip()
    return "" if value == '""' else value


def _language(pid: Segment, language_map: Mapping[str, str]) -> str | None:
    for comp in (1, 4, 2):
        code = pid.get(15, comp).strip()
        if not code or code == '""':
            continue
        key = code.upper()
        if key in language_map:
            return language_map[key]
        if key in _LANGUAGES:
            return _LANGUAGES[key]
        if re.fullmatch(r"[A-Za-z]{2}([-_][A-Za-z0-9]+)?", code):
            return code[:2].lower()
    return None


def _privacy(message: Message, pid: Segment) -> str | None:
    """The first reason the patient must not be contacted, as a stable code."""
    if pid.get(30, 1).strip().upper() == "Y" or pid.get(29, 1).strip() not in ("", '""'):
        return "pid.deceased"
    pd1 = message.first("PD1")
    if pd1 is not None:
        if pd1.get(12, 1).strip().upper() == "Y":
            return "pd1.protection"
        if pd1.get(11, 1).strip().upper() in ("N", "F"):
            return "pd1.publicity"
    pv1 = message.first("PV1")
    if pv1 is not None and pv1.get(16, 1).strip().upper() not in ("", "N", "NO", "U", '""'):
        return "pv1.vip"
    for arv in message.all("ARV"):
        if arv.get(2, 1).strip().upper() != "D":
            return "arv.restricted"
    return None


def build_patient(
    message: Message,
    pid: Segment,
    problems: list[Problem],
    *,
    region: str | None,
    id_type: str | None = None,
    language_map: Mapping[str, str] | None = None,
) -> PatientInfo | None:
    """The patient of ``pid``; None (with a problem appended) when it has no identifier.

    Args:
        message: the whole message (PD1, PV1 and ARV are read from it).
        pid: the PID segment.
        problems: where non-fatal problems are appended.
        region: default phone region.
        id_type: preferred PID-3 identifier type code.
        language_map: site PID-15 codes, upper case, checked before the built-in table.
    """
    patient_id = _patient_id(pid, id_type)
    if not patient_id:
        problems.append(
            Problem(
                code="patient.no_id",
                message="no patient identifier in PID-3 or PID-2",
                field="PID-3",
            )
        )
        return None
    choice = choose_phone(pid, region)
    if choice.invalid_field is not None:
        problems.append(
            Problem(
                code="phone.invalid",
                message="no valid phone number; phone left empty",
                field="PID-13",
            )
        )
    reason = _privacy(message, pid)
    given = pid.get(5, 2).strip()
    return PatientInfo(
        id=patient_id,
        phone=choice.phone,
        language=_language(pid, language_map or {}),
        given_name=given if given and given != '""' else None,
        phone_cleared=choice.cleared,
        contact_allowed=reason is None,
        contact_block_reason=reason,
    )
