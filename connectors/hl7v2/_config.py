"""The ``[connectors.hl7v2]`` config section: every key checked, every problem reported at once.

See :data:`CONFIG_KEYS` for the keys, their defaults and meaning (the lead copies that table
into ``config/bridge.example.toml``).
"""

from __future__ import annotations

__all__ = ["CONFIG_KEYS", "OUTBOUND_KEYS", "Hl7v2Settings", "OutboundSettings", "parse_settings"]

import ipaddress
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from bridge.errors import ConfigError, ConfigProblem
from connectors.hl7v2._mllp import IPNetwork, ListenerConfig
from connectors.hl7v2._translate import (
    FHIR_APPOINTMENT_STATUSES,
    FieldRef,
    TranslateConfig,
    charset_codec,
)

#: key → (default, meaning) for the listener section
CONFIG_KEYS: Mapping[str, tuple[object, str]] = {
    "host": ("127.0.0.1", "address the MLLP listener binds"),
    "port": (2575, "TCP port (0 = any free port; BRIDGE_MLLP_PORT overrides)"),
    "max_frame_bytes": (1048576, "largest message accepted; larger ones get AR"),
    "idle_timeout_seconds": (300, "close a connection silent this long (0 = never)"),
    "encoding": (
        "utf-8",
        "charset when MSH-18 is empty or unknown; undecodable bytes fall back to Latin-1",
    ),
    "timezone": ("UTC", "IANA zone for HL7 times written without an offset"),
    "phone_region": (None, "ISO 3166 region for phone numbers without a country code (US, GB, CO)"),
    "appointment_id": ("SCH-2.1,SCH-1.1", "where the appointment id is read, first non-empty wins"),
    "patient_id_type": (None, "prefer the PID-3 repetition with this CX-5 type code (MR, PI)"),
    "status_map": ({}, "table: vendor SCH-25 code (any case) = FHIR status (booked, cancelled...)"),
    "language_map": ({}, "table: PID-15 code (any case) = language code (es, en...)"),
    "system": ("hl7v2", "namespace of appointment and result ids from this interface"),
    "allow_ips": ([], "sender addresses or networks allowed to connect (empty = all)"),
    "tls_cert": (None, "PEM certificate path; with tls_key turns TLS on"),
    "tls_key": (None, "PEM private key path"),
    "tls_client_ca": (
        None,
        "PEM CA bundle; when set, senders must present a certificate it signed",
    ),
    "ack_application": ("BRIDGE", "our MSH-3 when answering a message whose MSH cannot be read"),
    "ack_facility": ("", "our MSH-4 in that case"),
    "outbound": (
        {},
        "table: decisions back to the HIS (see OUTBOUND_KEYS); absent = apply() refuses",
    ),
}

#: key → (default, meaning) for the ``outbound`` table
OUTBOUND_KEYS: Mapping[str, tuple[object, str]] = {
    "host": (None, "HIS MLLP host (required)"),
    "port": (None, "HIS MLLP port (required)"),
    "ack_timeout_seconds": (10.0, "wait this long for the ACK"),
    "connect_timeout_seconds": (5.0, "wait this long for the TCP (TLS) connection"),
    "max_attempts": (3, "in-process tries on no ACK, connection errors or AE"),
    "retry_wait_seconds": (0.5, "first wait between tries (doubles, capped at 5 s)"),
    "confirm": ("SRM^S03", "message type for a confirmation (or SIU^S14)"),
    "cancel": ("SRM^S04", "message type for a cancellation (or SIU^S15)"),
    "reschedule": ("SRM^S02", "message type for a reschedule request (or SIU^S13)"),
    "confirmed_status": ("Booked", "SCH-25 / ARQ reason code sent with a confirmation"),
    "sending_application": ("BRIDGE", "MSH-3"),
    "sending_facility": ("", "MSH-4"),
    "receiving_application": ("", "MSH-5"),
    "receiving_facility": ("", "MSH-6"),
    "version": ("2.5", "MSH-12 of what we send"),
    "processing_id": ("P", "MSH-11"),
    "tls": (False, "connect with TLS (system trust store, or tls_ca)"),
    "tls_ca": (None, "PEM CA bundle to verify the HIS"),
    "tls_cert": (None, "our client certificate (PEM) when the HIS asks for one"),
    "tls_key": (None, "its key"),
}

_MESSAGE_TYPES = frozenset({"SRM^S02", "SRM^S03", "SRM^S04", "SIU^S13", "SIU^S14", "SIU^S15"})
_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"})


@dataclass(frozen=True, kw_only=True)
class OutboundSettings:
    """Where and how decisions are sent to the HIS."""

    host: str
    port: int
    ack_timeout: float = 10.0
    connect_timeout: float = 5.0
    max_attempts: int = 3
    retry_wait: float = 0.5
    confirm: str = "SRM^S03"
    cancel: str = "SRM^S04"
    reschedule: str = "SRM^S02"
    confirmed_status: str = "Booked"
    sending_application: str = "BRIDGE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    version: str = "2.5"
    processing_id: str = "P"
    ssl_context: ssl.SSLContext | None = None


@dataclass(frozen=True, kw_only=True)
class Hl7v2Settings:
    """The validated section."""

    listener: ListenerConfig = field(default_factory=ListenerConfig)
    outbound: OutboundSettings | None = None


class _Collector:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.problems: list[ConfigProblem] = []

    def add(self, key: str, reason: str) -> None:
        self.problems.append(ConfigProblem("config", f"{self.prefix}.{key}", reason))


def _str(section: Mapping[str, Any], key: str, default: str | None, c: _Collector) -> str | None:
    value = section.get(key, default)
    if value is None or isinstance(value, str):
        return value
    c.add(key, f"must be a string, got {type(value).__name__}")
    return default


def _int(
    section: Mapping[str, Any], key: str, default: int, low: int, high: int, c: _Collector
) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        c.add(key, f"must be an integer, got {type(value).__name__}")
        return default
    if not low <= value <= high:
        c.add(key, f"must be between {low} and {high}, got {value}")
        return default
    return value


def _float(
    section: Mapping[str, Any], key: str, default: float, low: float, c: _Collector
) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        c.add(key, f"must be a number, got {type(value).__name__}")
        return default
    if value < low:
        c.add(key, f"must be at least {low}, got {value}")
        return default
    return float(value)


def _path(section: Mapping[str, Any], key: str, c: _Collector) -> Path | None:
    value = _str(section, key, None, c)
    if value is None:
        return None
    path = Path(value)
    if not path.is_file():
        c.add(key, f"file {value} does not exist")
        return None
    return path


def _table(section: Mapping[str, Any], key: str, c: _Collector) -> dict[str, str]:
    value = section.get(key, {})
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        c.add(key, "must be a table of strings")
        return {}
    return dict(value)


def parse_settings(section: Mapping[str, Any], section_path: str) -> Hl7v2Settings:
    """Validate ``section`` and build the settings.

    Raises:
        ConfigError: listing every problem, keys prefixed by ``section_path``.
    """
    c = _Collector(section_path)
    for key in section:
        if key not in CONFIG_KEYS:
            c.add(key, f"unknown key; known keys: {', '.join(sorted(CONFIG_KEYS))}")
    host = _str(section, "host", "127.0.0.1", c) or "127.0.0.1"
    port = _int(section, "port", 2575, 0, 65535, c)
    max_frame = _int(section, "max_frame_bytes", 1048576, 1024, 1 << 30, c)
    idle = _float(section, "idle_timeout_seconds", 300.0, 0.0, c)
    encoding = _str(section, "encoding", "utf-8", c) or "utf-8"
    codec = charset_codec(encoding)
    if codec is None:
        c.add("encoding", f"unknown character set {encoding!r}")
        codec = "utf-8"
    zone_name = _str(section, "timezone", "UTC", c) or "UTC"
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        c.add("timezone", f"unknown IANA time zone {zone_name!r}")
        zone = ZoneInfo("UTC")
    region = _str(section, "phone_region", None, c)
    if region is not None:
        region = region.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            c.add(
                "phone_region", f"unknown region {region!r}; use an ISO 3166 code such as US or CO"
            )
            region = None
    rule = section.get("appointment_id", "SCH-2.1,SCH-1.1")
    refs: list[FieldRef] = []
    items = rule.split(",") if isinstance(rule, str) else rule if isinstance(rule, list) else None
    if not items or not all(isinstance(i, str) for i in items):
        c.add("appointment_id", "must be a list like ['SCH-2.1', 'SCH-1.1'] or 'SCH-2.1,SCH-1.1'")
    else:
        for item in items:
            try:
                refs.append(FieldRef.parse(item))
            except ValueError as exc:
                c.add("appointment_id", str(exc))
    status_map = {k.strip().lower(): v for k, v in _table(section, "status_map", c).items()}
    for code, status in status_map.items():
        if status not in FHIR_APPOINTMENT_STATUSES:
            c.add(
                f"status_map.{code}",
                f"{status!r} is not one of {', '.join(sorted(FHIR_APPOINTMENT_STATUSES))}",
            )
    language_map = {k.strip().upper(): v for k, v in _table(section, "language_map", c).items()}
    allow: list[IPNetwork] = []
    raw_allow = section.get("allow_ips", [])
    if not isinstance(raw_allow, list) or not all(isinstance(a, str) for a in raw_allow):
        c.add("allow_ips", "must be a list of addresses or networks")
    else:
        for item in raw_allow:
            try:
                allow.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                c.add("allow_ips", f"{item!r} is not an IP address or network")
    ssl_context = _server_tls(section, c)
    translate = TranslateConfig(
        timezone=zone,
        phone_region=region,
        encoding=codec,
        appointment_id=tuple(refs) or TranslateConfig().appointment_id,
        status_map=status_map,
        language_map=language_map,
        patient_id_type=_str(section, "patient_id_type", None, c),
        system=_str(section, "system", "hl7v2", c) or "hl7v2",
    )
    listener = ListenerConfig(
        host=host,
        port=port,
        max_frame_bytes=max_frame,
        idle_timeout=idle or None,
        ssl_context=ssl_context,
        allow=tuple(allow),
        application=_str(section, "ack_application", "BRIDGE", c) or "BRIDGE",
        facility=_str(section, "ack_facility", "", c) or "",
        translate=translate,
    )
    outbound = None
    raw_out = section.get("outbound")
    if raw_out is not None:
        if not isinstance(raw_out, Mapping):
            c.add("outbound", "must be a table")
        else:
            outbound = _outbound(raw_out, _Collector(f"{section_path}.outbound"), c)
    if c.problems:
        raise ConfigError(c.problems)
    return Hl7v2Settings(listener=listener, outbound=outbound)


def _server_tls(section: Mapping[str, Any], c: _Collector) -> ssl.SSLContext | None:
    cert = _path(section, "tls_cert", c)
    key = _path(section, "tls_key", c)
    client_ca = _path(section, "tls_client_ca", c)
    if (section.get("tls_cert") is None) != (section.get("tls_key") is None):
        c.add("tls_key", "tls_cert and tls_key go together")
        return None
    if section.get("tls_client_ca") is not None and section.get("tls_cert") is None:
        c.add("tls_client_ca", "needs tls_cert and tls_key")
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
        if client_ca is not None:
            context.load_verify_locations(cafile=client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as exc:
        c.add("tls_cert", f"cannot load the certificate, key or CA ({type(exc).__name__})")
        return None
    return context


def _outbound(
    section: Mapping[str, Any], c: _Collector, parent: _Collector
) -> OutboundSettings | None:
    for key in section:
        if key not in OUTBOUND_KEYS:
            c.add(key, f"unknown key; known keys: {', '.join(sorted(OUTBOUND_KEYS))}")
    host = _str(section, "host", None, c)
    if not host:
        c.add("host", "required")
    port = _int(section, "port", 0, 1, 65535, c) if "port" in section else 0
    if "port" not in section:
        c.add("port", "required")
    kinds: dict[str, str] = {}
    for key, default in (("confirm", "SRM^S03"), ("cancel", "SRM^S04"), ("reschedule", "SRM^S02")):
        value = (_str(section, key, default, c) or default).upper()
        if value not in _MESSAGE_TYPES:
            c.add(key, f"must be one of {', '.join(sorted(_MESSAGE_TYPES))}")
            value = default
        kinds[key] = value
    version = _str(section, "version", "2.5", c) or "2.5"
    if version not in _VERSIONS:
        c.add("version", f"must be one of {', '.join(sorted(_VERSIONS))}")
        version = "2.5"
    if version in ("2.7", "2.8") and any(k.startswith("SIU") for k in kinds.values()):
        # hl7apy 1.3.5 leaves SCH-9/SCH-11 (withdrawn in 2.7) out when writing, which moves
        # SCH-25 two fields to the left: SIU decisions are written in 2.6 or older
        c.add("version", "SIU decisions are written in version 2.6 or older")
    use_tls = section.get("tls", False)
    if not isinstance(use_tls, bool):
        c.add("tls", "must be true or false")
        use_tls = False
    ca = _path(section, "tls_ca", c)
    cert = _path(section, "tls_cert", c)
    cert_key = _path(section, "tls_key", c)
    context = None
    if use_tls or ca is not None or cert is not None:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        if cert is not None and cert_key is not None:
            context.load_cert_chain(cert, cert_key)
    settings = OutboundSettings(
        host=host or "",
        port=port,
        ack_timeout=_float(section, "ack_timeout_seconds", 10.0, 0.01, c),
        connect_timeout=_float(section, "connect_timeout_seconds", 5.0, 0.01, c),
        max_attempts=_int(section, "max_attempts", 3, 1, 20, c),
        retry_wait=_float(section, "retry_wait_seconds", 0.5, 0.0, c),
        confirm=kinds["confirm"],
        cancel=kinds["cancel"],
        reschedule=kinds["reschedule"],
        confirmed_status=_str(section, "confirmed_status", "Booked", c) or "Booked",
        sending_application=_str(section, "sending_application", "BRIDGE", c) or "BRIDGE",
        sending_facility=_str(section, "sending_facility", "", c) or "",
        receiving_application=_str(section, "receiving_application", "", c) or "",
        receiving_facility=_str(section, "receiving_facility", "", c) or "",
        version=version,
        processing_id=_str(section, "processing_id", "P", c) or "P",
        ssl_context=context,
    )
    parent.problems.extend(c.problems)
    return None if c.problems else settings
