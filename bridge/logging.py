"""structlog set-up: JSON lines by default, readable text on a terminal, PHI and secrets masked.

The redactor is the last line of defence, not the first: code logs ids, never content
(STYLE.md §7). Still, a phone number pasted into an exception message or a token echoed by a
library must not reach the journal, so every event dict passes through :class:`Redactor` before
it is rendered. ⟵ courier ``RedactValues``.
"""

from __future__ import annotations

__all__ = ["REDACTED", "Redactor", "configure_logging", "get_logger"]

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, WrappedLogger

REDACTED = "[redacted]"

#: Keys whose values are patient data or secrets whatever they contain.
_SENSITIVE_KEYS = frozenset(
    {
        "phone",
        "to",
        "from",
        "recipient",
        "recipient_id",
        "wa_id",
        "channel_user",
        "name",
        "given_name",
        "family_name",
        "patient_name",
        "text",
        "body",
        "message_text",
        "token",
        "access_token",
        "authorization",
        "app_secret",
        "secret",
        "password",
        "verify_token",
        "payload",
        "content",
    }
)
#: Phone-like text: E.164 (``+`` and 8-15 digits, separators allowed) or a local number written
#: with separators (``(300) 123-4567``). Bare digit runs are left alone on purpose: they are
#: usually our ids (appointment, MRN, outbox), which operators need; keys such as ``phone`` and
#: ``to`` are masked whatever their value.
_PHONE_RE = re.compile(
    r"\+\d(?:[\s\-().]?\d){7,14}(?!\d)"
    r"|(?<![\w.])\(?\d{2,4}\)?[\s\-.]\d{3,4}[\s\-.]\d{3,4}(?![\w.])"
)


class Redactor:
    """A structlog processor that masks sensitive keys, phone numbers and known secrets.

    Args:
        secrets: secret values to mask wherever they appear (tokens, app secret).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        """Return ``event_dict`` with sensitive values masked."""
        self._clean_mapping(event_dict)
        return event_dict

    def _clean_mapping(self, data: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in list(data.items()):
            if key.lower() in _SENSITIVE_KEYS and value is not None:
                data[key] = REDACTED
            else:
                data[key] = self._clean(value)
        return data

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, dict):
            return self._clean_mapping(dict(value))
        if isinstance(value, list | tuple):
            return [self._clean(v) for v in value]
        if isinstance(value, BaseException):
            return self.scrub(f"{type(value).__name__}: {value}")
        return value

    def scrub(self, text: str) -> str:
        """Mask secrets and phone-like numbers inside free text."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _PHONE_RE.sub(REDACTED, text)


def _render_exception_safely(redactor: Redactor) -> structlog.types.Processor:
    """Format tracebacks, then scrub them: exception text is as risky as any message."""
    formatter = structlog.processors.format_exc_info

    def processor(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        event_dict = formatter(logger, method, event_dict)
        if "exception" in event_dict:
            event_dict["exception"] = redactor.scrub(str(event_dict["exception"]))
        return event_dict

    return processor


def configure_logging(
    *,
    fmt: str = "auto",
    level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> Redactor:
    """Configure structlog (and stdlib logging of libraries) for the daemon and the CLI.

    Args:
        fmt: ``json``, ``console`` or ``auto`` (console on a TTY, JSON otherwise).
        level: minimum level name.
        secrets: values to mask.
        stream: where lines go (stderr by default, so stdout stays for command output).

    Returns:
        The redactor in use (tests feed it more secrets).
    """
    stream = stream or sys.stderr
    redactor = Redactor(secrets)
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: structlog.types.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    level_no = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _render_exception_safely(redactor),
            redactor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (uvicorn, sqlalchemy, apscheduler) log through stdlib: keep them quiet and
    # route what they do say through the same redaction.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(_RedactingFormatter(redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level_no, logging.WARNING))
    return redactor


class _RedactingFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.scrub(super().format(record))


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def get_logger(**bindings: Any) -> FilteringBoundLogger:
    """Return a bound logger; bind ids only (``outbox_id``, ``event_id``, ``connector``)."""
    logger: FilteringBoundLogger = structlog.get_logger().bind(**bindings)
    return logger
