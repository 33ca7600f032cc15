"""Templates as code: what the bridge will send, checked against the WABA before sending.

Implements reference whatsapp.md §5 (template management API) and the §1.2 rules that cause
132000 (parameter count), 132001 (name/language missing or not approved) and 132012 (format).
A template object as ``GET /{waba}/message_templates`` returns it::

    {"name": "appointment_reminder", "language": "es", "status": "APPROVED",
     "category": "UTILITY", "parameter_format": "POSITIONAL", "id": "1000000000002",
     "components": [{"type": "BODY", "text": "Hola {{1}}, ... {{2}} ... {{3}} ... {{4}}."},
                    {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Confirmar"},
                                                    ...]}]}

``bridge templates check`` runs :func:`check_templates` over every declared
:class:`TemplateSpec`; :func:`sync_templates` fetches the WABA's list (following paging) and
checks it in one go.
"""

from __future__ import annotations

__all__ = [
    "ENGINE_TEMPLATES",
    "Mismatch",
    "TemplateSpec",
    "check_templates",
    "sync_templates",
]

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.whatsapp._client import GraphClient

_POSITIONAL = re.compile(r"\{\{\s*(\d+)\s*\}\}")
_NAMED = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


@dataclass(frozen=True, kw_only=True, slots=True)
class TemplateSpec:
    """A template the bridge sends, as it will be sent.

    Attributes:
        name: template name.
        language: exact language code (``es``, ``en_US``; no fallback, reference §7).
        body: number of positional body parameters, or the parameter names (named format).
        header: number of text header parameters (0 or 1).
        buttons: button types in template order (``QUICK_REPLY``, ``URL``...); a ``URL`` button
            is one we send a dynamic suffix for, so its URL must end in ``{{1}}``.
    """

    name: str
    language: str
    body: int | tuple[str, ...] = 0
    header: int = 0
    buttons: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class Mismatch:
    """One difference between a spec and the WABA, named so an operator can fix it.

    Attributes:
        name / language: the spec concerned.
        kind: ``missing``, ``language_missing``, ``not_approved``, ``incomplete``,
            ``parameter_format``, ``body_params``, ``header_params``, ``buttons``.
        expected / found: what the spec wants and what the WABA has.
    """

    name: str
    language: str
    kind: str
    expected: str
    found: str

    def __str__(self) -> str:
        return (
            f"{self.name} [{self.language}]: {self.kind}: expected {self.expected}, "
            f"found {self.found}"
        )


def _reminder(language: str) -> TemplateSpec:
    return TemplateSpec(
        name="appointment_reminder",
        language=language,
        body=4,
        buttons=("QUICK_REPLY", "QUICK_REPLY", "QUICK_REPLY"),
    )


#: The templates the engine uses (the sandbox ships the same list), in Spanish and US English.
ENGINE_TEMPLATES: tuple[TemplateSpec, ...] = tuple(
    spec
    for language in ("es", "en_US")
    for spec in (
        _reminder(language),
        TemplateSpec(name="results_ready", language=language, body=1, buttons=("URL",)),
        TemplateSpec(name="appointment_confirmed", language=language, body=2),
        TemplateSpec(name="appointment_cancelled", language=language, body=2),
        TemplateSpec(name="appointment_rescheduled", language=language, body=2),
    )
)


def _component(template: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    components = template.get("components")
    if not isinstance(components, list):
        return None
    for component in components:
        if isinstance(component, dict) and str(component.get("type", "")).upper() == kind:
            return component
    return None


def _placeholders(text: object, *, named: bool) -> list[str]:
    if not isinstance(text, str):
        return []
    found = (_NAMED if named else _POSITIONAL).findall(text)
    return list(dict.fromkeys(found))  # distinct, in order


def _check_one(spec: TemplateSpec, remote: Mapping[str, Any]) -> list[Mismatch]:
    def miss(kind: str, expected: object, found: object) -> Mismatch:
        return Mismatch(
            name=spec.name,
            language=spec.language,
            kind=kind,
            expected=str(expected),
            found=str(found),
        )

    out: list[Mismatch] = []
    status = remote.get("status")
    if status != "APPROVED":
        out.append(miss("not_approved", "APPROVED", status))
    if not isinstance(remote.get("components"), list):
        out.append(miss("incomplete", "components in the listing", "none (fetch with fields=)"))
        return out
    named = str(remote.get("parameter_format", "POSITIONAL")).upper() == "NAMED"
    body = _component(remote, "BODY")
    params = _placeholders(body.get("text") if body else None, named=named)
    if isinstance(spec.body, tuple):
        if not named:
            out.append(miss("parameter_format", "NAMED", "POSITIONAL"))
        elif sorted(params) != sorted(spec.body):
            out.append(miss("body_params", ",".join(spec.body), ",".join(params) or "none"))
    elif named and spec.body:
        out.append(miss("parameter_format", "POSITIONAL", "NAMED"))
    elif len(params) != spec.body:
        out.append(miss("body_params", spec.body, len(params)))
    header = _component(remote, "HEADER")
    header_format = str(header.get("format", "TEXT")).upper() if header else None
    if spec.header and header_format not in (None, "TEXT"):
        out.append(miss("header_params", f"{spec.header} text", f"{header_format} header"))
    else:
        header_params = _placeholders(header.get("text") if header else None, named=named)
        if len(header_params) != spec.header:
            out.append(miss("header_params", spec.header, len(header_params)))
    buttons_component = _component(remote, "BUTTONS")
    raw_buttons = buttons_component.get("buttons") if buttons_component else None
    buttons = (
        [b for b in raw_buttons if isinstance(b, dict)] if isinstance(raw_buttons, list) else []
    )
    types = tuple(str(b.get("type", "")).upper() for b in buttons)
    if types != spec.buttons:
        out.append(miss("buttons", ",".join(spec.buttons) or "none", ",".join(types) or "none"))
    else:
        for index, (kind, button) in enumerate(zip(types, buttons, strict=True)):
            if kind == "URL" and not _POSITIONAL.search(str(button.get("url", ""))):
                out.append(
                    miss("buttons", f"URL button {index} with a {{{{1}}}} suffix", "static URL")
                )
    return out


def check_templates(
    specs: Iterable[TemplateSpec], remote_templates: Sequence[Mapping[str, Any]]
) -> list[Mismatch]:
    """Compare every spec with the WABA's templates.

    Args:
        specs: what the bridge will send.
        remote_templates: the ``data`` items of ``GET /{waba}/message_templates`` (all pages).

    Returns:
        Every mismatch, in spec order; empty when everything can be sent.
    """
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for template in remote_templates:
        name = template.get("name")
        if isinstance(name, str):
            by_name.setdefault(name, []).append(template)
    out: list[Mismatch] = []
    for spec in specs:
        candidates = by_name.get(spec.name)
        if not candidates:
            out.append(
                Mismatch(
                    name=spec.name,
                    language=spec.language,
                    kind="missing",
                    expected="a template of this name",
                    found="none",
                )
            )
            continue
        same_language = [t for t in candidates if t.get("language") == spec.language]
        if not same_language:
            languages = sorted({str(t.get("language")) for t in candidates})
            out.append(
                Mismatch(
                    name=spec.name,
                    language=spec.language,
                    kind="language_missing",
                    expected=spec.language,
                    found=",".join(languages),
                )
            )
            continue
        # Several entries of one name+language should not exist; prefer an approved one.
        remote = next((t for t in same_language if t.get("status") == "APPROVED"), same_language[0])
        out.extend(_check_one(spec, remote))
    return out


async def sync_templates(
    client: GraphClient, specs: Iterable[TemplateSpec]
) -> tuple[list[dict[str, Any]], list[Mismatch]]:
    """Fetch the WABA's templates (all pages) and check the specs against them.

    Returns:
        ``(templates, mismatches)``: the raw template objects, for the store, and the check.

    Raises:
        bridge.errors.SendError: the list could not be fetched.
    """
    templates = await client.list_templates()
    return templates, check_templates(specs, templates)
