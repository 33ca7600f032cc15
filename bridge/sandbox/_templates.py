"""Template registry of the sandbox: Graph template objects loaded from a JSON file (reference §5).

The file holds what ``GET /{waba_id}/message_templates`` would return, either as
``{"data": [...]}`` or as a bare list. One object, trimmed::

    {"name": "appointment_reminder", "language": "es", "status": "APPROVED",
     "category": "UTILITY", "parameter_format": "POSITIONAL",
     "components": [{"type": "BODY", "text": "Hola {{1}}, ... {{2}} ..."},
                    {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Confirmar"}]}]}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Template",
    "TemplateButton",
    "TemplateFileError",
    "TemplateRegistry",
    "load_templates",
]


class TemplateFileError(ValueError):
    """The template file cannot be used; the message names the template position and field."""


_POSITIONAL = re.compile(r"\{\{\s*(\d+)\s*\}\}")
_NAMED = re.compile(r"\{\{\s*([a-z_][a-z0-9_]*)\s*\}\}")


@dataclass(frozen=True, slots=True)
class TemplateButton:
    """One button of a template's BUTTONS component.

    Args:
        index: 0-based position (what send requests put in ``index``).
        type: ``QUICK_REPLY``, ``URL``, ``PHONE_NUMBER``...
        text: The label the patient sees.
        url: For URL buttons, the URL (with ``{{1}}`` when it takes a suffix).
    """

    index: int
    type: str
    text: str
    url: str | None = None

    @property
    def dynamic(self) -> bool:
        """Whether the URL button takes a suffix parameter at send time."""
        return self.url is not None and "{{" in self.url


@dataclass(frozen=True, slots=True)
class Template:
    """A template translation: one name in one language.

    Args:
        raw: The Graph object as loaded (returned by the list endpoint).
        name: Template name.
        language: Language code, exact (``en_US`` is not ``en``).
        status: ``APPROVED``, ``PAUSED``, ``DISABLED``...
        category: ``UTILITY``, ``MARKETING``, ``AUTHENTICATION``.
        named: Whether ``parameter_format`` is ``NAMED``.
        header_params: Parameter names (or numbers) of a text header.
        header_format: ``TEXT``, ``IMAGE``, ``DOCUMENT``... or ``None`` without a header.
        body_text: BODY text with its placeholders.
        body_params: Parameter names (or numbers as strings) of the body, in order.
        buttons: The buttons, by index.
    """

    raw: dict[str, Any]
    name: str
    language: str
    status: str
    category: str
    named: bool
    header_format: str | None
    header_params: tuple[str, ...]
    body_text: str
    body_params: tuple[str, ...]
    buttons: tuple[TemplateButton, ...]

    def quick_reply_labels(self) -> list[str]:
        """Return the labels of the quick-reply buttons in index order."""
        return [b.text for b in self.buttons if b.type == "QUICK_REPLY"]


def _placeholders(text: str, *, named: bool) -> tuple[str, ...]:
    pattern = _NAMED if named else _POSITIONAL
    seen: list[str] = []
    for match in pattern.finditer(text):
        if match.group(1) not in seen:
            seen.append(match.group(1))
    return tuple(seen)


def _parse_template(obj: Any, position: int) -> Template:
    if not isinstance(obj, dict):
        raise TemplateFileError(f"template #{position} is not an object")
    for key in ("name", "language", "status", "category", "components"):
        if key not in obj:
            raise TemplateFileError(f"template #{position} lacks {key!r}")
    components = obj["components"]
    if not isinstance(components, list):
        raise TemplateFileError(f"template #{position}: components must be a list")
    named = str(obj.get("parameter_format", "POSITIONAL")).upper() == "NAMED"
    header_format: str | None = None
    header_params: tuple[str, ...] = ()
    body_text = ""
    body_params: tuple[str, ...] = ()
    buttons: list[TemplateButton] = []
    for comp in components:
        if not isinstance(comp, dict) or "type" not in comp:
            raise TemplateFileError(f"template #{position}: a component lacks 'type'")
        kind = str(comp["type"]).upper()
        if kind == "HEADER":
            header_format = str(comp.get("format", "TEXT")).upper()
            if header_format == "TEXT":
                header_params = _placeholders(str(comp.get("text", "")), named=named)
        elif kind == "BODY":
            body_text = str(comp.get("text", ""))
            body_params = _placeholders(body_text, named=named)
        elif kind == "BUTTONS":
            for index, button in enumerate(comp.get("buttons", [])):
                if not isinstance(button, dict):
                    raise TemplateFileError(
                        f"template #{position}: button {index} is not an object"
                    )
                buttons.append(
                    TemplateButton(
                        index=index,
                        type=str(button.get("type", "")).upper(),
                        text=str(button.get("text", "")),
                        url=button.get("url"),
                    )
                )
    return Template(
        raw=obj,
        name=str(obj["name"]),
        language=str(obj["language"]),
        status=str(obj["status"]).upper(),
        category=str(obj["category"]).upper(),
        named=named,
        header_format=header_format,
        header_params=header_params,
        body_text=body_text,
        body_params=body_params,
        buttons=tuple(buttons),
    )


class TemplateRegistry:
    """The WABA's templates, keyed by (name, language).

    Args:
        templates: The translations, in listing order.
    """

    def __init__(self, templates: list[Template]) -> None:
        self._list = list(templates)
        self._by_key = {(t.name, t.language): t for t in templates}

    def __len__(self) -> int:
        return len(self._list)

    def all(self) -> list[Template]:
        """Return every translation in listing order."""
        return list(self._list)

    def get(self, name: str, language: str) -> Template | None:
        """Return the translation ``name``/``language`` (exact match), or ``None``."""
        return self._by_key.get((name, language))

    def translations(self, name: str) -> list[Template]:
        """Return every language of template ``name``."""
        return [t for t in self._list if t.name == name]


def load_templates(path: Path) -> TemplateRegistry:
    """Load a template file.

    Args:
        path: JSON file with ``{"data": [...]}`` or a list of Graph template objects.

    Returns:
        The registry, with ids filled in where the file has none.

    Raises:
        TemplateFileError: The file is not valid JSON or a template lacks a required field.
        OSError: The file cannot be read.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TemplateFileError(f"template file is not JSON (line {exc.lineno})") from exc
    items = doc.get("data") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise TemplateFileError("template file must hold a list or {'data': [...]}")
    templates = []
    for position, obj in enumerate(items):
        template = _parse_template(obj, position)
        if "id" not in template.raw:
            template.raw["id"] = str(1_000_000_000_000 + position)
        templates.append(template)
    return TemplateRegistry(templates)
