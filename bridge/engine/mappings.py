"""Message mappings: from a message kind, a language and a render context to a notification.

A site's mappings folder (``mappings/`` in the repository, shipped as
``bridge/engine/default_mappings``) holds one TOML file per message kind and language; see
:mod:`bridge.engine._mapping_load` for the layout. :meth:`MappingSet.load` validates everything
at start (unknown field, parameter count against the declared template, missing language or
kind, sensitive fields) and lists every problem in one :class:`~bridge.errors.ConfigError`.
:meth:`MappingSet.render` then produces ``Notification.content`` in the shapes of
:mod:`bridge.whatsapp._payloads` (reference whatsapp.md §1.2-§1.4)::

    >>> kind, content = mappings.render("reminder", "es", context)
    >>> kind
    'template'
    >>> content
    {'name': 'appointment_reminder', 'language': 'es',
     'body': ['Ana', 'miércoles, 6 de noviembre de 2024', '9:00 a. m.', 'Sede Norte'],
     'buttons': [{'index': 0, 'sub_type': 'quick_reply', 'payload': 'confirm.AbC'}, ...]}

Rendering raises :class:`~bridge.errors.MappingError` and nothing else: a message that cannot be
rendered is permanent (dead-letter), never retried.
"""

from __future__ import annotations

__all__ = [
    "ALWAYS_REFUSED",
    "DEFAULT_SENSITIVE",
    "FIELDS",
    "KINDS",
    "MappingSet",
    "RenderContext",
]

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.domain import FreeSlot
from bridge.engine._mapping_context import (
    ALWAYS_REFUSED,
    DEFAULT_SENSITIVE,
    FIELDS,
    RenderContext,
    resolve_field,
    resolve_payload,
)
from bridge.engine._mapping_load import (
    KIND_TYPES,
    ButtonsMapping,
    CompiledMapping,
    ListMapping,
    TemplateMapping,
    TextMapping,
    load_folder,
)
from bridge.engine.formatting import clean_text, interpolate, placeholders, truncate
from bridge.errors import MappingError

if TYPE_CHECKING:
    from bridge.whatsapp import TemplateSpec

#: Every message kind a mapping set provides (each must exist in the default language).
KINDS: frozenset[str] = frozenset(KIND_TYPES)

#: The mappings shipped with the package (a copy of the repository's ``mappings/``).
_DEFAULT_FOLDER = Path(__file__).resolve().parent / "default_mappings"

#: Meta's limits on what we render (reference whatsapp.md §1.2-§1.4).
_TEXT_BODY = 4096
_BUTTONS_BODY = 1024
_LIST_BODY = 4096
_PAYLOAD = 256
_HEADER_PARAM = 60
_BUTTON_ID = 256
_ROW_ID = 200
_ROW_TITLE = 24
_ROW_DESCRIPTION = 72
_ROWS = 10


def _where(mapping: CompiledMapping, key: str) -> str:
    # Relative "es/reminder.toml: body[1]": enough for an operator, and no local paths in errors.
    return f"{mapping.language}/{mapping.kind}.toml: {key}"


class MappingSet:
    """The validated mappings of one site: every kind in every language it declares.

    Build one with :meth:`load` (a site folder) or :meth:`default` (the shipped mappings).
    """

    def __init__(
        self, default_language: str, mappings: Mapping[str, Mapping[str, CompiledMapping]]
    ):
        """Wrap already-validated mappings; use :meth:`load` instead."""
        self._default = default_language
        self._mappings = mappings

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        sensitive_fields: Collection[str] = DEFAULT_SENSITIVE,
        allow_sensitive: Collection[str] = (),
    ) -> MappingSet:
        """Read and validate a mappings folder.

        Args:
            folder: holds ``site.toml`` and one sub-folder of ``<kind>.toml`` per language.
            sensitive_fields: field names or patterns (``result.*``) refused as parameters.
            allow_sensitive: sensitive fields this site accepts (``appointment.service`` for a
                site whose service names reveal nothing); result data stays refused.

        Returns:
            The mapping set.

        Raises:
            bridge.errors.ConfigError: listing every problem, each with its file and key.
        """
        default, compiled = load_folder(
            Path(folder), sensitive=frozenset(sensitive_fields), allowed=frozenset(allow_sensitive)
        )
        return cls(default, compiled)

    @classmethod
    def default(cls) -> MappingSet:
        """The mappings shipped with the bridge (Spanish for Colombia, US English).

        Raises:
            bridge.errors.ConfigError: the packaged files are broken (a packaging bug).
        """
        return cls.load(_DEFAULT_FOLDER)

    @property
    def default_language(self) -> str:
        """The language used when a patient's own has no file."""
        return self._default

    def languages(self) -> set[str]:
        """The language keys this site has files for (``{"es", "en"}``)."""
        return set(self._mappings)

    def language_for(self, language: str | None) -> str:
        """The language key used for a patient whose language is ``language``.

        ``es-CO``, ``ES`` and ``es_CO`` all pick ``es``; anything unknown picks the default.
        """
        if isinstance(language, str):
            tag = language.strip().lower().replace("_", "-")
            if tag in self._mappings:
                return tag
            primary = tag.split("-", 1)[0]
            if primary in self._mappings:
                return primary
        return self._default

    def mapping(self, kind: str, language: str | None) -> CompiledMapping:
        """The mapping used for ``kind`` in the patient's ``language`` (default as fallback).

        Raises:
            bridge.errors.MappingError: no such kind.
        """
        chosen = self.language_for(language)
        found = self._mappings.get(chosen, {}).get(kind)
        if found is None:
            found = self._mappings.get(self._default, {}).get(kind)
        if found is None:
            raise MappingError(f"kind {kind[:40]!r}", "no mapping for this message kind")
        return found

    def render(
        self, kind: str, language: str | None, context: RenderContext
    ) -> tuple[str, dict[str, Any]]:
        """Render one message.

        Args:
            kind: the message kind (``reminder``, ``cancel_question``...; see :data:`KINDS`).
            language: the patient's language (``es``, ``en-GB``, None); unknown ones fall back to
                the site's default language.
            context: what the message may draw from.

        Returns:
            ``(notification kind, content)``: ``("template", {"name", "language", "body",
            "buttons", "header"?})``, ``("text", {"body"})``, ``("buttons", {"body",
            "buttons"})`` or ``("list", {"body", "button", "sections"})``.

        Raises:
            bridge.errors.MappingError: the message cannot be rendered (a value it needs is
                missing, a payload is missing or too long, an unknown time zone...). Nothing
                else is raised.
        """
        mapping = self.mapping(kind, language)
        try:
            return mapping.type, _render(mapping, context)
        except MappingError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # A malformed context (wrong types from a caller) is still an unrenderable message.
            raise MappingError(_where(mapping, "(render)"), type(exc).__name__) from exc

    def template_specs(self) -> list[TemplateSpec]:
        """The templates these mappings send, for ``bridge templates check``.

        Returns:
            One :class:`bridge.whatsapp.TemplateSpec` per distinct name and Meta language, in
            a stable order.
        """
        # Imported here: the engine must not pull the channel in just to render messages.
        from bridge.whatsapp import TemplateSpec

        specs: dict[tuple[str, str], TemplateSpec] = {}
        for language in sorted(self._mappings):
            for kind in sorted(self._mappings[language]):
                mapping = self._mappings[language][kind]
                if isinstance(mapping, TemplateMapping):
                    specs.setdefault(
                        (mapping.name, mapping.meta_language),
                        TemplateSpec(
                            name=mapping.name,
                            language=mapping.meta_language,
                            body=len(mapping.body),
                            header=len(mapping.header),
                            buttons=mapping.button_types,
                        ),
                    )
        return [specs[key] for key in sorted(specs)]


def _field(
    mapping: CompiledMapping,
    name: str,
    context: RenderContext,
    key: str,
    slot: FreeSlot | None = None,
) -> str:
    return resolve_field(
        name,
        context,
        style=mapping.style,
        fallbacks=mapping.fallbacks,
        where=_where(mapping, key),
        slot=slot,
    )


def _text(
    mapping: CompiledMapping,
    text: str,
    context: RenderContext,
    key: str,
    *,
    limit: int,
    slot: FreeSlot | None = None,
) -> str:
    values = {name: _field(mapping, name, context, key, slot) for name in placeholders(text)}
    rendered = interpolate(text, values).strip()
    if len(rendered) > limit:
        raise MappingError(_where(mapping, key), f"renders longer than {limit} characters")
    return rendered


def _render(mapping: CompiledMapping, context: RenderContext) -> dict[str, Any]:
    if isinstance(mapping, TemplateMapping):
        return _render_template(mapping, context)
    if isinstance(mapping, TextMapping):
        return {"body": _text(mapping, mapping.body, context, "body", limit=_TEXT_BODY)}
    if isinstance(mapping, ButtonsMapping):
        ids = [
            resolve_payload(key, context, limit=_BUTTON_ID, where=_where(mapping, f"buttons[{i}]"))
            for i, (key, _) in enumerate(mapping.buttons)
        ]
        _unique(mapping, "buttons", ids)
        return {
            "body": _text(mapping, mapping.body, context, "body", limit=_BUTTONS_BODY),
            "buttons": [
                {"id": button_id, "title": title}
                for button_id, (_, title) in zip(ids, mapping.buttons, strict=True)
            ],
        }
    if isinstance(mapping, ListMapping):
        return _render_list(mapping, context)
    raise MappingError(_where(mapping, "type"), "unsupported mapping type")  # pragma: no cover


def _unique(mapping: CompiledMapping, key: str, ids: list[str]) -> None:
    # Meta refuses a message whose ids repeat, trailing spaces ignored (pywa 1.7.1); a reply to
    # it could not be told apart anyway.
    if len({i.rstrip() for i in ids}) != len(ids):
        raise MappingError(_where(mapping, key), "two entries carry the same payload")


def _render_template(mapping: TemplateMapping, context: RenderContext) -> dict[str, Any]:
    content: dict[str, Any] = {"name": mapping.name, "language": mapping.meta_language}
    if mapping.header:
        header: list[str] = []
        for index, name in enumerate(mapping.header):
            key = f"parameters.header[{index}]"
            value = _field(mapping, name, context, key)
            if len(value) > _HEADER_PARAM:
                # A header holds 60 characters (reference §1.2); names may be cut, dates may not.
                if not FIELDS[name].display:
                    raise MappingError(_where(mapping, key), f"longer than {_HEADER_PARAM}")
                value = truncate(value, _HEADER_PARAM)
            header.append(value)
        content["header"] = header
    content["body"] = [
        _field(mapping, name, context, f"parameters.body[{i}]")
        for i, name in enumerate(mapping.body)
    ]
    buttons: list[dict[str, Any]] = []
    for index, (sub_type, source) in enumerate(mapping.buttons):
        key = f"parameters.buttons[{index}]"
        if sub_type == "quick_reply":
            payload = resolve_payload(source, context, limit=_PAYLOAD, where=_where(mapping, key))
            buttons.append({"index": index, "sub_type": "quick_reply", "payload": payload})
        else:
            text = _field(mapping, source, context, key)
            buttons.append({"index": index, "sub_type": "url", "text": text})
    content["buttons"] = buttons
    return content


def _render_list(mapping: ListMapping, context: RenderContext) -> dict[str, Any]:
    rows: list[dict[str, str]] = []
    if mapping.slot_title is None:
        for index, (key, title, description) in enumerate(mapping.rows):
            where = _where(mapping, f"rows[{index}]")
            row = {"id": resolve_payload(key, context, limit=_ROW_ID, where=where), "title": title}
            if description:
                row["description"] = description
            rows.append(row)
        _unique(mapping, "rows", [row["id"] for row in rows])
    else:
        rows = _slot_rows(mapping, mapping.slot_title, context)
    return {
        "body": _text(mapping, mapping.body, context, "body", limit=_LIST_BODY),
        "button": mapping.button,
        "sections": [{"title": mapping.section, "rows": rows}],
    }


def _slot_rows(
    mapping: ListMapping, title_text: str, context: RenderContext
) -> list[dict[str, str]]:
    where = _where(mapping, "slots")
    slots, ids = list(context.slots), list(context.slot_payloads)
    if not slots:
        raise MappingError(where, "no slots to offer (send no_slots instead)")
    if len(slots) != len(ids):
        raise MappingError(where, f"{len(slots)} slot(s) but {len(ids)} slot payload(s)")
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    # WhatsApp lists hold 10 rows (reference §1.4); the engine asks for fewer, extra ones wait.
    for index, (slot, row_id) in enumerate(zip(slots[:_ROWS], ids[:_ROWS], strict=True)):
        key = f"slots[{index}]"
        if not isinstance(row_id, str) or not row_id.strip() or len(row_id) > _ROW_ID:
            raise MappingError(_where(mapping, key), f"row id must be 1-{_ROW_ID} characters")
        if row_id.rstrip() in seen:
            raise MappingError(_where(mapping, key), "duplicate row id")
        seen.add(row_id.rstrip())
        title = _text(mapping, title_text, context, "slots.title", limit=1000, slot=slot)
        row = {"id": row_id, "title": truncate(clean_text(title), _ROW_TITLE)}
        if mapping.slot_description is not None:
            description = _text(
                mapping,
                mapping.slot_description,
                context,
                "slots.description",
                limit=1000,
                slot=slot,
            )
            description = truncate(clean_text(description), _ROW_DESCRIPTION)
            if description:
                row["description"] = description
        rows.append(row)
    return rows
