"""Reading and validating a mappings folder: TOML files in, compiled mappings or every problem out.

Layout of a mappings folder (the shipped one is ``mappings/`` and its packaged copy)::

    site.toml              default_language, and per language: babel locale, date formats,
                           fallback texts (``[languages.es]``)
    es/reminder.toml       one file per message kind and language
    en/reminder.toml ...

A kind file says how the message is sent (``type``: ``template``, ``text``, ``buttons``,
``list``) and where each variable part comes from. Template files also declare the template as
approved at Meta (name, language code, body text with its ``{{n}}``, button types), so a wrong
parameter count is caught here, at start, instead of as error 132000 at send time.

Every problem in every file is collected before failing, each naming the file and the key.
"""

from __future__ import annotations

__all__ = [
    "KIND_TYPES",
    "ButtonsMapping",
    "CompiledMapping",
    "ListMapping",
    "TemplateMapping",
    "TextMapping",
    "load_folder",
]

import re
import tomllib
from collections.abc import Collection
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.engine._mapping_context import FIELDS, is_sensitive
from bridge.engine.formatting import (
    DateStyle,
    PlaceholderSyntaxError,
    placeholders,
    template_placeholders,
)
from bridge.errors import ConfigError, ConfigProblem

#: Every message kind the engine renders and the ``type`` each may be sent as.
KIND_TYPES: AbcMapping[str, frozenset[str]] = {
    **{k: frozenset({"template"}) for k in ("reminder", "results")},
    **{k: frozenset({"template"}) for k in ("confirmed", "cancelled", "rescheduled")},
    **{
        k: frozenset({"text"})
        for k in (
            "confirmed_text",
            "kept_text",
            "cancelled_text",
            "rescheduled_text",
            "no_slots",
            "help_ack",
            "handoff_ack",
            "unknown_reply",
            "optout_ack",
            "optin_ack",
            "expired_reply",
            "not_linked",
            "ehr_failed",
            "slot_taken",
            "survey_thanks",
        )
    },
    "cancel_question": frozenset({"buttons"}),
    "slot_list": frozenset({"list"}),
    "survey": frozenset({"buttons", "list"}),
}

#: Kinds whose list rows are the offered slots rather than fixed rows.
_SLOT_LIST_KINDS = frozenset({"slot_list"})

#: Meta's limits on what a mapping file writes itself (reference whatsapp.md §1.1-§1.4).
_LIMIT_TEXT = 4096
_LIMIT_BUTTONS_BODY = 1024
_LIMIT_BUTTON_TITLE = 20
_LIMIT_LIST_BUTTON = 20
_LIMIT_SECTION_TITLE = 24
_LIMIT_ROW_TITLE = 24
_LIMIT_ROW_DESCRIPTION = 72
_LIMIT_BUTTONS = 3
_LIMIT_ROWS = 10

_TEMPLATE_NAME = re.compile(r"[a-z0-9_]{1,512}")
_META_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Za-z]{2,4})?")
_LANGUAGE_KEY = re.compile(r"[a-z]{2,3}")
_PAYLOAD_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TEMPLATE_BUTTON_TYPES = frozenset({"QUICK_REPLY", "URL"})

_STYLE_KEYS = ("locale", "date_format", "short_date_format", "time_format")
_COMMON_KEYS = frozenset({"type", "fallbacks", *_STYLE_KEYS})
_TYPE_KEYS: AbcMapping[str, frozenset[str]] = {
    "template": frozenset({"template", "parameters"}),
    "text": frozenset({"body"}),
    "buttons": frozenset({"body", "buttons"}),
    "list": frozenset({"body", "button", "section", "rows", "slots"}),
}


@dataclass(frozen=True, kw_only=True, slots=True)
class CompiledMapping:
    """What every compiled mapping has: where it came from and how to write dates and gaps."""

    kind: str
    language: str
    path: str
    style: DateStyle
    fallbacks: AbcMapping[str, str] = field(default_factory=dict)

    @property
    def type(self) -> str:
        """The notification kind this mapping renders to."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True, slots=True)
class TemplateMapping(CompiledMapping):
    """A template message: the declared template and the source of each parameter.

    ``buttons`` holds one ``(sub_type, source)`` per template button: ``("quick_reply",
    payload key)`` or ``("url", field name)``.
    """

    name: str
    meta_language: str
    header: tuple[str, ...] = ()
    body: tuple[str, ...] = ()
    button_types: tuple[str, ...] = ()
    buttons: tuple[tuple[str, str], ...] = ()

    @property
    def type(self) -> str:
        """Always ``template``."""
        return "template"


@dataclass(frozen=True, kw_only=True, slots=True)
class TextMapping(CompiledMapping):
    """A free text with ``{field}`` placeholders."""

    body: str

    @property
    def type(self) -> str:
        """Always ``text``."""
        return "text"


@dataclass(frozen=True, kw_only=True, slots=True)
class ButtonsMapping(CompiledMapping):
    """Reply buttons: a body and ``(payload key, title)`` per button."""

    body: str
    buttons: tuple[tuple[str, str], ...]

    @property
    def type(self) -> str:
        """Always ``buttons``."""
        return "buttons"


@dataclass(frozen=True, kw_only=True, slots=True)
class ListMapping(CompiledMapping):
    """A list: fixed ``(payload key, title, description)`` rows, or one row per offered slot."""

    body: str
    button: str
    section: str
    rows: tuple[tuple[str, str, str | None], ...] = ()
    slot_title: str | None = None
    slot_description: str | None = None

    @property
    def type(self) -> str:
        """Always ``list``."""
        return "list"


class _Problems:
    """Collects every problem; the loader carries on after each so all are listed at once."""

    def __init__(self) -> None:
        self.items: list[ConfigProblem] = []

    def add(self, source: Path | str, key: str, reason: str) -> None:
        self.items.append(ConfigProblem(source=str(source), key=key, reason=reason))


@dataclass(frozen=True, kw_only=True, slots=True)
class _Language:
    style: DateStyle
    fallbacks: AbcMapping[str, str]


@dataclass(kw_only=True, slots=True)
class _FileReader:
    """Validation helpers bound to one file; each check records a problem and returns a default."""

    path: Path
    problems: _Problems
    sensitive: Collection[str]
    allowed: Collection[str]

    def add(self, key: str, reason: str) -> None:
        self.problems.add(self.path, key, reason)

    def string(
        self, data: AbcMapping[str, Any], key: str, where: str, *, limit: int | None = None
    ) -> str | None:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            self.add(where, "required: a non-empty string")
            return None
        if limit is not None and len(value) > limit:
            self.add(where, f"longer than WhatsApp's limit of {limit} characters")
        return value

    def table(self, data: AbcMapping[str, Any], key: str, where: str) -> dict[str, Any] | None:
        value = data.get(key)
        if not isinstance(value, dict):
            self.add(where, "required: a table")
            return None
        return value

    def unknown_keys(self, data: AbcMapping[str, Any], known: Collection[str], prefix: str) -> None:
        for key in data:
            if key not in known:
                self.add(
                    f"{prefix}{key}", f"unknown key (expected one of {', '.join(sorted(known))})"
                )

    def check_field(self, name: object, where: str, *, slot_rows: bool = False) -> str | None:
        """Validate one field reference; return it when usable."""
        if not isinstance(name, str) or not name:
            self.add(where, "must be a field name such as appointment.date")
            return None
        verdict = is_sensitive(name, self.sensitive, self.allowed)
        if verdict == "always":
            self.add(where, f"{name} is result data, which never goes into a message")
            return None
        if verdict == "sensitive":
            self.add(
                where,
                f"{name} is marked sensitive (PHI); remove it or list it in the site's "
                "allow_sensitive",
            )
            return None
        spec = FIELDS.get(name)
        if spec is None:
            self.add(where, f"unknown field {name} (known: {', '.join(sorted(FIELDS))})")
            return None
        if spec.scope == "slot" and not slot_rows:
            self.add(where, f"{name} can only be used in the slot rows of a slot list")
            return None
        return name

    def free_text(
        self,
        data: AbcMapping[str, Any],
        key: str,
        where: str,
        *,
        limit: int,
        slot_rows: bool = False,
    ) -> str | None:
        text = self.string(data, key, where, limit=limit)
        if text is None:
            return None
        try:
            names = placeholders(text)
        except PlaceholderSyntaxError as exc:
            self.add(where, f"{exc}; write placeholders as {{appointment.date}}")
            return None
        ok = True
        for name in names:
            ok = self.check_field(name, where, slot_rows=slot_rows) is not None and ok
        return text if ok else None

    def static_text(
        self, data: AbcMapping[str, Any], key: str, where: str, *, limit: int
    ) -> str | None:
        text = self.string(data, key, where, limit=limit)
        if text is not None and ("{" in text or "}" in text):
            self.add(where, "this text cannot hold placeholders")
            return None
        return text

    def payload_key(self, data: AbcMapping[str, Any], where: str) -> str | None:
        value = data.get("payload")
        if not isinstance(value, str) or not _PAYLOAD_KEY.fullmatch(value):
            self.add(where, "required: the intent whose payload the engine issues (e.g. confirm)")
            return None
        return value


def _read_toml(path: Path, problems: _Problems) -> dict[str, Any] | None:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        problems.add(path, "(file)", f"not valid TOML: {exc}")
    except OSError as exc:
        problems.add(path, "(file)", f"cannot be read: {type(exc).__name__}")
    return None


def _style(
    data: AbcMapping[str, Any], base: DateStyle | None, path: Path, problems: _Problems
) -> DateStyle | None:
    values: dict[str, str] = {}
    if base is not None:
        values = {key: getattr(base, key) for key in _STYLE_KEYS}
    for key in _STYLE_KEYS:
        if key in data:
            if not isinstance(data[key], str) or not data[key].strip():
                problems.add(path, key, "must be a non-empty string")
                return None
            values[key] = data[key]
    if "locale" not in values:
        problems.add(path, "locale", "required: a babel locale such as es_CO")
        return None
    style = DateStyle(**values)
    bad = style.check()
    for key, reason in bad:
        problems.add(path, key, reason)
    return None if bad else style


def _fallbacks(reader: _FileReader, data: AbcMapping[str, Any], key: str) -> dict[str, str]:
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        reader.add(key, 'must be a table of field = "text"')
        return {}
    out: dict[str, str] = {}
    for name, text in raw.items():
        where = f'{key}."{name}"'
        if reader.check_field(name, where) is None:
            continue
        if not FIELDS[name].display:
            reader.add(where, f"{name} cannot have a fallback: a wrong value is worse than none")
        elif not isinstance(text, str) or not " ".join(text.split()):
            reader.add(where, "must be a non-empty string")
        else:
            out[name] = text
    return out


def _template(
    reader: _FileReader, data: AbcMapping[str, Any], common: dict[str, Any]
) -> CompiledMapping | None:
    declared = reader.table(data, "template", "template")
    params = reader.table(data, "parameters", "parameters")
    if declared is None or params is None:
        return None
    reader.unknown_keys(declared, {"name", "language", "header", "body", "buttons"}, "template.")
    reader.unknown_keys(params, {"header", "body", "buttons"}, "parameters.")
    name = reader.string(declared, "name", "template.name")
    if name is not None and not _TEMPLATE_NAME.fullmatch(name):
        reader.add("template.name", "must be lowercase letters, digits and _ (Meta's rule)")
        name = None
    meta_language = reader.string(declared, "language", "template.language")
    if meta_language is not None and not _META_LANGUAGE.fullmatch(meta_language):
        reader.add("template.language", "must be Meta's exact code, such as es or en_US")
        meta_language = None
    ok = name is not None and meta_language is not None

    sources: dict[str, tuple[str, ...]] = {}
    for part in ("header", "body"):
        text = declared.get(part)
        fields_ = params.get(part, [])
        if text is None and part == "header":
            count = 0
        elif not isinstance(text, str) or not text.strip():
            reader.add(
                f"template.{part}", "required: the approved text with its {{n}} placeholders"
            )
            ok = False
            continue
        else:
            numbers = template_placeholders(text)
            count = len(numbers)
            if sorted(numbers) != list(range(1, count + 1)):
                reader.add(f"template.{part}", "placeholders must be {{1}}..{{n}} without gaps")
                ok = False
        if not isinstance(fields_, list):
            reader.add(f"parameters.{part}", "must be a list of field names")
            ok = False
            continue
        if len(fields_) != count:
            reader.add(
                f"parameters.{part}",
                f"{len(fields_)} parameter(s) but the template's {part} has {count}",
            )
            ok = False
        checked = [reader.check_field(f, f"parameters.{part}[{i}]") for i, f in enumerate(fields_)]
        ok = ok and all(c is not None for c in checked)
        sources[part] = tuple(c for c in checked if c is not None)

    types_raw = declared.get("buttons", [])
    button_params = params.get("buttons", [])
    types: list[str] = []
    if not isinstance(types_raw, list) or not all(isinstance(t, str) for t in types_raw):
        reader.add("template.buttons", 'must be a list such as ["QUICK_REPLY", "URL"]')
        ok = False
    else:
        for index, kind in enumerate(types_raw):
            if kind.upper() not in _TEMPLATE_BUTTON_TYPES:
                reader.add(f"template.buttons[{index}]", "the bridge sends QUICK_REPLY or URL only")
                ok = False
            types.append(kind.upper())
    buttons: list[tuple[str, str]] = []
    if not isinstance(button_params, list):
        reader.add("parameters.buttons", "must be a list of {payload = ...} or {text = ...}")
        return None
    if len(button_params) != len(types):
        reader.add(
            "parameters.buttons",
            f"{len(button_params)} button parameter(s) but the template has {len(types)} button(s)",
        )
        ok = False
    for index, (kind, entry) in enumerate(zip(types, button_params, strict=False)):
        where = f"parameters.buttons[{index}]"
        if not isinstance(entry, dict):
            reader.add(where, "must be a table")
            ok = False
        elif kind == "QUICK_REPLY":
            # A quick reply without payload echoes its localised label (reference §7): always set one.
            reader.unknown_keys(entry, {"payload"}, f"{where}.")
            key = reader.payload_key(entry, f"{where}.payload")
            ok = ok and key is not None
            buttons.append(("quick_reply", key or ""))
        elif kind == "URL":
            reader.unknown_keys(entry, {"text"}, f"{where}.")
            source = reader.check_field(entry.get("text"), f"{where}.text")
            ok = ok and source is not None
            buttons.append(("url", source or ""))
    if not ok or name is None or meta_language is None:
        return None
    return TemplateMapping(
        **common,
        name=name,
        meta_language=meta_language,
        header=sources.get("header", ()),
        body=sources.get("body", ()),
        button_types=tuple(types),
        buttons=tuple(buttons),
    )


def _buttons(
    reader: _FileReader, data: AbcMapping[str, Any], common: dict[str, Any]
) -> CompiledMapping | None:
    body = reader.free_text(data, "body", "body", limit=_LIMIT_BUTTONS_BODY)
    raw = data.get("buttons")
    if not isinstance(raw, list) or not 1 <= len(raw) <= _LIMIT_BUTTONS:
        reader.add("buttons", f"required: 1 to {_LIMIT_BUTTONS} [[buttons]] with payload and title")
        return None
    buttons: list[tuple[str, str]] = []
    ok = body is not None
    for index, entry in enumerate(raw):
        where = f"buttons[{index}]"
        if not isinstance(entry, dict):
            reader.add(where, "must be a table")
            ok = False
            continue
        reader.unknown_keys(entry, {"payload", "title"}, f"{where}.")
        key = reader.payload_key(entry, f"{where}.payload")
        title = reader.static_text(entry, "title", f"{where}.title", limit=_LIMIT_BUTTON_TITLE)
        if key is None or title is None:
            ok = False
            continue
        buttons.append((key, title))
    if len({t for _, t in buttons}) != len(buttons):
        reader.add("buttons", "button titles must be unique (Meta's rule)")
        ok = False
    if len({k for k, _ in buttons}) != len(buttons):
        reader.add("buttons", "each button needs its own payload")
        ok = False
    if not ok or body is None:
        return None
    return ButtonsMapping(**common, body=body, buttons=tuple(buttons))


def _list(
    reader: _FileReader, data: AbcMapping[str, Any], common: dict[str, Any]
) -> CompiledMapping | None:
    body = reader.free_text(data, "body", "body", limit=_LIMIT_TEXT)
    button = reader.static_text(data, "button", "button", limit=_LIMIT_LIST_BUTTON)
    section = reader.static_text(data, "section", "section", limit=_LIMIT_SECTION_TITLE)
    ok = body is not None and button is not None and section is not None
    slot_rows = common["kind"] in _SLOT_LIST_KINDS
    rows: list[tuple[str, str, str | None]] = []
    slot_title: str | None = None
    slot_description: str | None = None
    if slot_rows:
        if "rows" in data:
            reader.add("rows", "a slot list's rows are the offered slots; use [slots] instead")
            ok = False
        slots = reader.table(data, "slots", "slots")
        if slots is None:
            return None
        reader.unknown_keys(slots, {"title", "description"}, "slots.")
        slot_title = reader.free_text(slots, "title", "slots.title", limit=200, slot_rows=True)
        if "description" in slots:
            slot_description = reader.free_text(
                slots, "description", "slots.description", limit=200, slot_rows=True
            )
            ok = ok and slot_description is not None
        ok = ok and slot_title is not None
    else:
        if "slots" in data:
            reader.add("slots", f"only a {'/'.join(sorted(_SLOT_LIST_KINDS))} has slot rows")
            ok = False
        raw = data.get("rows")
        if not isinstance(raw, list) or not 1 <= len(raw) <= _LIMIT_ROWS:
            reader.add("rows", f"required: 1 to {_LIMIT_ROWS} [[rows]] with payload and title")
            return None
        for index, entry in enumerate(raw):
            where = f"rows[{index}]"
            if not isinstance(entry, dict):
                reader.add(where, "must be a table")
                ok = False
                continue
            reader.unknown_keys(entry, {"payload", "title", "description"}, f"{where}.")
            key = reader.payload_key(entry, f"{where}.payload")
            title = reader.static_text(entry, "title", f"{where}.title", limit=_LIMIT_ROW_TITLE)
            description = None
            if "description" in entry:
                description = reader.static_text(
                    entry, "description", f"{where}.description", limit=_LIMIT_ROW_DESCRIPTION
                )
                ok = ok and description is not None
            if key is None or title is None:
                ok = False
                continue
            rows.append((key, title, description))
        if len({k for k, _, _ in rows}) != len(rows):
            reader.add("rows", "each row needs its own payload")
            ok = False
    if not ok or body is None or button is None or section is None:
        return None
    return ListMapping(
        **common,
        body=body,
        button=button,
        section=section,
        rows=tuple(rows),
        slot_title=slot_title,
        slot_description=slot_description,
    )


def _compile(
    path: Path,
    kind: str,
    language: str,
    lang: _Language,
    problems: _Problems,
    sensitive: Collection[str],
    allowed: Collection[str],
) -> CompiledMapping | None:
    data = _read_toml(path, problems)
    if data is None:
        return None
    reader = _FileReader(path=path, problems=problems, sensitive=sensitive, allowed=allowed)
    kind_type = data.get("type")
    allowed_types = KIND_TYPES[kind]
    if not isinstance(kind_type, str) or kind_type not in allowed_types:
        reader.add("type", f"{kind} is sent as {' or '.join(sorted(allowed_types))}")
        return None
    reader.unknown_keys(data, _COMMON_KEYS | _TYPE_KEYS[kind_type], "")
    style = _style(data, lang.style, path, problems)
    fallbacks = {**lang.fallbacks, **_fallbacks(reader, data, "fallbacks")}
    if style is None:
        return None
    common: dict[str, Any] = {
        "kind": kind,
        "language": language,
        "path": str(path),
        "style": style,
        "fallbacks": fallbacks,
    }
    if kind_type == "template":
        return _template(reader, data, common)
    if kind_type == "text":
        body = reader.free_text(data, "body", "body", limit=_LIMIT_TEXT)
        return TextMapping(**common, body=body) if body is not None else None
    if kind_type == "buttons":
        return _buttons(reader, data, common)
    return _list(reader, data, common)


def _site(
    folder: Path, problems: _Problems, sensitive: Collection[str], allowed: Collection[str]
) -> tuple[str | None, dict[str, _Language]]:
    path = folder / "site.toml"
    data = _read_toml(path, problems)
    if data is None:
        return None, {}
    reader = _FileReader(path=path, problems=problems, sensitive=sensitive, allowed=allowed)
    reader.unknown_keys(data, {"default_language", "languages"}, "")
    default = reader.string(data, "default_language", "default_language")
    table = reader.table(data, "languages", "languages")
    languages: dict[str, _Language] = {}
    for key, section in (table or {}).items():
        where = f"languages.{key}"
        if not _LANGUAGE_KEY.fullmatch(key):
            reader.add(where, "language keys are ISO 639 codes in lowercase (es, en)")
            continue
        if not isinstance(section, dict):
            reader.add(where, "must be a table")
            continue
        reader.unknown_keys(section, {*_STYLE_KEYS, "fallbacks"}, f"{where}.")
        before = len(problems.items)
        style = _style(section, None, path, problems)
        # _style names the bare key; prefix it with the language section for the operator.
        for index in range(before, len(problems.items)):
            item = problems.items[index]
            problems.items[index] = ConfigProblem(item.source, f"{where}.{item.key}", item.reason)
        fallbacks = _fallbacks(reader, section, "fallbacks")
        if style is not None:
            languages[key] = _Language(style=style, fallbacks=fallbacks)
    if default is not None and table is not None and default not in table:
        reader.add("default_language", f"{default!r} is not declared under [languages]")
    return default, languages


def load_folder(
    folder: Path, *, sensitive: Collection[str], allowed: Collection[str]
) -> tuple[str, dict[str, dict[str, CompiledMapping]]]:
    """Read and validate a mappings folder.

    Args:
        folder: the folder holding ``site.toml`` and one sub-folder per language.
        sensitive: field patterns refused unless allowed.
        allowed: sensitive fields this site allows.

    Returns:
        ``(default_language, {language: {kind: mapping}})``.

    Raises:
        ConfigError: listing every problem, each with its file and key.
    """
    problems = _Problems()
    if not folder.is_dir():
        raise ConfigError([ConfigProblem(str(folder), "(folder)", "mappings folder not found")])
    default, languages = _site(folder, problems, sensitive, allowed)
    declared = set(languages)
    compiled: dict[str, dict[str, CompiledMapping]] = {}
    for entry in sorted(folder.iterdir()):
        undeclared = entry.name not in declared and _LANGUAGE_KEY.fullmatch(entry.name)
        if entry.is_dir() and undeclared:
            problems.add(entry, "(folder)", "language folder not declared in site.toml [languages]")
    for language, lang in sorted(languages.items()):
        lang_folder = folder / language
        if not lang_folder.is_dir():
            problems.add(lang_folder, "(folder)", f"missing language: no files for {language!r}")
            continue
        kinds: dict[str, CompiledMapping] = {}
        for path in sorted(lang_folder.glob("*.toml")):
            kind = path.stem
            if kind not in KIND_TYPES:
                problems.add(path, "(file)", f"unknown message kind {kind!r} (file name = kind)")
                continue
            mapping = _compile(path, kind, language, lang, problems, sensitive, allowed)
            if mapping is not None:
                kinds[kind] = mapping
        compiled[language] = kinds
    if default is not None and default in languages and (folder / default).is_dir():
        for kind in sorted(KIND_TYPES):
            path = folder / default / f"{kind}.toml"
            if not path.exists():
                problems.add(path, "(file)", f"missing kind {kind!r} in the default language")
    _check_template_agreement(compiled, problems)
    if problems.items or default is None:
        if not problems.items:  # pragma: no cover - default None always records a problem
            problems.add(folder / "site.toml", "default_language", "required")
        raise ConfigError(problems.items)
    return default, compiled


def _check_template_agreement(
    compiled: AbcMapping[str, AbcMapping[str, CompiledMapping]], problems: _Problems
) -> None:
    """Two files naming one template (name + Meta language) must agree on its shape."""
    seen: dict[tuple[str, str], TemplateMapping] = {}
    for kinds in compiled.values():
        for mapping in kinds.values():
            if not isinstance(mapping, TemplateMapping):
                continue
            key = (mapping.name, mapping.meta_language)
            first = seen.setdefault(key, mapping)
            shape = (len(first.header), len(first.body), first.button_types)
            if (len(mapping.header), len(mapping.body), mapping.button_types) != shape:
                problems.add(
                    mapping.path,
                    "template",
                    f"{mapping.name} [{mapping.meta_language}] is declared differently in "
                    f"{first.path}",
                )
