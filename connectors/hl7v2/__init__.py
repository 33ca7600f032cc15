"""The HL7 v2 connector: MLLP listener (SIU/ORU/ADT → events) and decisions back (SRM/SIU).

Enabled by name (``[bridge] connectors = ["hl7v2"]``) and registered as the entry point
``connectors.hl7v2:Hl7v2Connector``. Protocol facts: ``../shared/reference/hl7v2.md``.

Config section ``[connectors.hl7v2]`` (every key optional; see :data:`CONFIG_KEYS`)::

    host = "127.0.0.1"
    port = 2575                         # BRIDGE_MLLP_PORT overrides (wired by the daemon)
    max_frame_bytes = 1048576
    idle_timeout_seconds = 300          # 0 = never
    encoding = "utf-8"                  # when MSH-18 is empty; bad bytes fall back to Latin-1
    timezone = "America/Bogota"         # for HL7 times without an offset
    phone_region = "CO"                 # for numbers without a country code
    appointment_id = "SCH-2.1,SCH-1.1"  # first non-empty wins
    patient_id_type = "MR"              # prefer this PID-3 identifier type (optional)
    system = "hl7v2"                    # namespace of appointment/result ids
    allow_ips = ["10.0.0.0/8"]          # empty = all
    tls_cert = "/etc/bridge/mllp.pem"   # with tls_key: TLS on
    tls_key = "/etc/bridge/mllp.key"
    tls_client_ca = "/etc/bridge/his-ca.pem"  # require client certificates

    [connectors.hl7v2.status_map]       # SCH-25 vendor code (any case) = FHIR status
    O = "booked"
    "1" = "booked"

    [connectors.hl7v2.language_map]     # PID-15 code = language
    ESP = "es"

    [connectors.hl7v2.outbound]         # absent: apply() raises EHRRejected("not_configured")
    host = "his.example.org"
    port = 6661
    ack_timeout_seconds = 10
    max_attempts = 3
    confirm = "SRM^S03"                 # or "SIU^S14"
    cancel = "SRM^S04"                  # or "SIU^S15"
    reschedule = "SRM^S02"              # or "SIU^S13"
    sending_application = "BRIDGE"
    receiving_application = "HIS"
"""

from __future__ import annotations

__all__ = [
    "CONFIG_KEYS",
    "OUTBOUND_KEYS",
    "Hl7v2Connector",
    "ListenFailed",
    "inspect",
    "translate",
]

from collections.abc import Mapping
from contextlib import AsyncExitStack
from typing import Any, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
import structlog
from structlog.typing import FilteringBoundLogger

from bridge.domain import CommandResult, Problem, SchedulingCommand, Translation
from bridge.errors import ConnectorError, EHRRejected
from bridge.ports import EventSink, PluginContext
from connectors.hl7v2._config import CONFIG_KEYS, OUTBOUND_KEYS, Hl7v2Settings, parse_settings
from connectors.hl7v2._mllp import MllpListener
from connectors.hl7v2._outbound import OutboundSender
from connectors.hl7v2._translate import TranslateConfig, translate


def inspect(payload: bytes, *, tz: str | None = None, region: str | None = None) -> Translation:
    """Translate one HL7 v2 file or frame the way the listener would, without a database.

    Used by ``bridge inspect hl7 FILE --tz ZONE --region CC``.

    Args:
        payload: the file's bytes (read in binary: ``\\r`` separators matter).
        tz: IANA zone for times without an offset (default UTC).
        region: ISO 3166 region for phone numbers without a country code.

    Returns:
        the translation; a bad ``tz``/``region`` is reported as a fatal problem.
    """
    problems: list[Problem] = []
    zone: ZoneInfo = ZoneInfo("UTC")
    if tz:
        try:
            zone = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(Problem(code="option.tz", message="unknown IANA time zone", fatal=True))
    code = region.upper() if region else None
    if code is not None and code not in phonenumbers.SUPPORTED_REGIONS:
        problems.append(Problem(code="option.region", message="unknown phone region", fatal=True))
        code = None
    if problems:
        return Translation(problems=tuple(problems))
    return translate(payload, TranslateConfig(timezone=zone, phone_region=code))


class ListenFailed(ConnectorError, OSError):
    """The MLLP port cannot be bound: a :class:`ConnectorError` (the port's contract) that is
    also the :class:`OSError` the daemon's bootstrap turns into its listener exit code."""


class Hl7v2Connector:
    """The ``hl7v2`` connector plugin (satisfies :class:`bridge.ports.Connector`).

    Attributes:
        name: ``hl7v2``.
        settings: the validated config section.
    """

    name = "hl7v2"

    def __init__(self, settings: Hl7v2Settings) -> None:
        self.settings = settings
        self._listener: MllpListener | None = None
        self._sender: OutboundSender | None = None

    @classmethod
    def from_config(cls, section: Mapping[str, Any], context: PluginContext) -> Self:
        """Build from ``[connectors.hl7v2]``.

        Raises:
            bridge.errors.ConfigError: every problem at once, keys prefixed by
                ``context.section_path``.
        """
        return cls(parse_settings(section, context.section_path))

    @property
    def port(self) -> int:
        """The bound MLLP port (after :meth:`start`)."""
        if self._listener is None:
            raise RuntimeError("connector not started")
        return self._listener.port

    async def start(
        self, exit_stack: AsyncExitStack, sink: EventSink, log: FilteringBoundLogger
    ) -> None:
        """Bind the MLLP listener and prepare the outbound client; cleanup goes on ``exit_stack``.

        Raises:
            ListenFailed: the port cannot be bound (a ConnectorError and an OSError).
        """
        listener = MllpListener(self.settings.listener, sink, log)
        try:
            await listener.start()
        except OSError as exc:
            raise ListenFailed(exc.errno or 0, exc.strerror or type(exc).__name__) from exc
        self._listener = listener
        exit_stack.push_async_callback(listener.close)
        if self.settings.outbound is not None:
            sender = OutboundSender(self.settings.outbound, log)
            self._sender = sender
            exit_stack.push_async_callback(sender.close)

    async def apply(self, command: SchedulingCommand) -> CommandResult:
        """Send one decision to the HIS and map its ACK.

        Raises:
            bridge.errors.EHRUnavailable: no ACK or ``AE`` after the in-process retries.
            bridge.errors.EHRRejected: ``AR``, or no ``outbound`` section configured.
        """
        if self._sender is None:
            if self.settings.outbound is None:
                raise EHRRejected(
                    self.name, "not_configured", "no [connectors.hl7v2.outbound] section"
                )
            self._sender = OutboundSender(self.settings.outbound, _null_log())
        return await self._sender.apply(command)


def _null_log() -> FilteringBoundLogger:
    logger: FilteringBoundLogger = structlog.get_logger("connectors.hl7v2")
    return logger
