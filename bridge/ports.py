"""Ports: the contracts between the core and everything outside it.

A line of code knows its room: a connector translates, the engine decides, the store remembers,
the channel sends. Anything that crosses two rooms goes through one of these Protocols. They are
``@runtime_checkable`` so plugins need not inherit from us; ``bridge.plugins`` checks them with
``isinstance`` at load time.
"""

from __future__ import annotations

__all__ = [
    "AcquiredRow",
    "Channel",
    "Clock",
    "Connector",
    "EventSink",
    "Notification",
    "Outbox",
    "OutboxRow",
    "PluginContext",
    "PluginState",
    "ReleaseResult",
    "SendReceipt",
    "SlotFinder",
    "SystemClock",
]

from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from structlog.typing import FilteringBoundLogger

from bridge.domain import (
    AppointmentRef,
    CommandResult,
    Event,
    FreeSlot,
    InboundMessage,
    IngestOutcome,
    SchedulingCommand,
)


@runtime_checkable
class Clock(Protocol):
    """**Protocol:** where "now" comes from, so tests can move time without patching."""

    def now(self) -> datetime:
        """Return the current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        """Return ``datetime.now(UTC)``."""
        return datetime.now(UTC)


@runtime_checkable
class PluginState(Protocol):
    """**Protocol:** small named values a plugin keeps across restarts (poll cursors, history).

    Shared by every daemon on the same database; names are namespaced per plugin.
    """

    async def get(self, name: str) -> str | None:
        """The value, or None when never set."""
        ...

    async def set(self, name: str, value: str) -> None:
        """Store the value durably."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class PluginContext:
    """What a plugin may use when it builds itself from its config section.

    Plugins are built with ``Plugin.from_config(section, context)``, a classmethod that raises
    :class:`bridge.errors.ConfigError` listing every problem with keys prefixed by
    ``section_path`` (``connectors.hl7v2.port``). Secrets come from ``secrets`` (already read
    from the environment or ``*_FILE`` paths by the config loader), never from the TOML.

    Attributes:
        section_path: dotted path of the plugin's section, for error messages.
        data_dir: where the bridge keeps state.
        secrets: secret values by name (``BRIDGE_FHIR_CLIENT_KEY``...).
        clock: the clock port.
        state: durable named values for this plugin; None when only validating
            (``bridge check-config`` opens no database).
    """

    section_path: str
    data_dir: Path
    secrets: Mapping[str, str]
    clock: Clock
    state: PluginState | None = None


@runtime_checkable
class EventSink(Protocol):
    """**Protocol:** where connectors put what they received.

    ``ingest`` returns only once the raw message and its events are committed: a connector
    acknowledges the sender after it returns, never before. It never raises for bad content
    (that is quarantined); it raises :class:`bridge.errors.StoreUnavailable` when nothing could
    be stored, and then the connector must not acknowledge.
    """

    async def ingest(self, message: InboundMessage) -> IngestOutcome:
        """Store ``message`` durably, dedupe it, and return what happened."""
        ...


@runtime_checkable
class Connector(Protocol):
    """**Protocol:** an EHR integration. Emits canonical events; applies scheduling commands.

    Attributes:
        name: the plugin name in config (``hl7v2``, ``fhir``).
    """

    name: str

    async def start(
        self, exit_stack: AsyncExitStack, sink: EventSink, log: FilteringBoundLogger
    ) -> None:
        """Open listeners and clients; push their cleanup onto ``exit_stack``.

        Raises:
            bridge.errors.ConnectorError: the connector cannot start.
        """
        ...

    async def apply(self, command: SchedulingCommand) -> CommandResult:
        """Apply one decision in the EHR, read it back where possible.

        Raises:
            bridge.errors.EHRUnavailable: retry later.
            bridge.errors.EHRRejected: do not retry as is.
        """
        ...


@runtime_checkable
class SlotFinder(Protocol):
    """**Protocol:** a connector that can offer free slots for rescheduling."""

    async def free_slots(self, appointment: AppointmentRef, limit: int) -> Sequence[FreeSlot]:
        """Return up to ``limit`` free slots for the same schedule and service."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class Notification:
    """One message for the channel to send, built by the engine, sent by the relay only.

    Attributes:
        outbox_id: the outbox row; sent as ``biz_opaque_callback_data``.
        to: the recipient, E.164 with ``+``.
        kind: ``template``, ``text``, ``buttons``, ``list``.
        content: kind-specific fields (see ``bridge.whatsapp`` for the shapes).
    """

    outbox_id: int
    to: str
    kind: str
    content: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class SendReceipt:
    """The channel accepted a message. ``message_id`` is the wamid; delivery comes later."""

    message_id: str
    accepted_status: str | None = None
    recipient_id: str | None = None


@runtime_checkable
class Channel(Protocol):
    """**Protocol:** a patient messaging channel."""

    name: str

    async def send(self, notification: Notification) -> SendReceipt:
        """Send one message.

        Raises:
            bridge.errors.SendError: with ``retryable`` telling the relay what to do.
        """
        ...

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[Event]:
        """Verify and translate one webhook body; pure function of headers and raw bytes."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxRow:
    """A planned message, as the engine enqueues it.

    ``idempotency_key`` is unique (appointment + version + reminder slot): enqueuing the same
    key twice keeps the first row. ``subject_key`` groups rows of one appointment or result so
    a re-plan can cancel them; ``recipient_key`` is the patient key for per-patient spacing.
    """

    kind: str
    idempotency_key: str
    due_at: datetime
    payload: Mapping[str, Any]
    channel: str = "whatsapp"
    subject_key: str | None = None
    recipient_key: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class AcquiredRow:
    """A row leased to one relay until ``lease_expires_at``."""

    id: int
    kind: str
    channel: str
    payload: Mapping[str, Any]
    attempts: int
    due_at: datetime
    lease_expires_at: datetime
    subject_key: str | None = None
    recipient_key: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ReleaseResult:
    """What came of sending one acquired row.

    Exactly one outcome: ``external_id`` set (sent), ``retry_at`` set (try again then),
    ``failed`` (permanent error), ``dead`` (attempts exhausted: dead-letter), or ``cancelled``
    (no longer wanted). ``refund_attempt`` with ``retry_at``: nothing reached the provider (a
    local limit held it), so the attempt is not counted.
    """

    id: int
    external_id: str | None = None
    retry_at: datetime | None = None
    failed: bool = False
    dead: bool = False
    cancelled: bool = False
    refund_attempt: bool = False
    error_code: str | None = None
    error_detail: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Outbox(Protocol):
    """**Protocol:** durable planned messages with leases (modelled on APScheduler's DataStore).

    Every method is safe to call from several relays in several processes at once: a row is
    handed to one relay at a time, and a relay that dies leaves its rows to be taken again once
    the lease expires.
    """

    async def enqueue(self, rows: Sequence[OutboxRow]) -> list[int]:
        """Insert rows; an existing idempotency key keeps its row. Returns the ids."""
        ...

    async def acquire(
        self, relay_id: str, lease: timedelta, limit: int, now: datetime
    ) -> list[AcquiredRow]:
        """Lease up to ``limit`` due rows that are unclaimed or whose lease expired."""
        ...

    async def release(self, relay_id: str, results: Sequence[ReleaseResult]) -> None:
        """Record outcomes for rows this relay holds; rows it no longer holds are ignored."""
        ...

    async def extend_leases(
        self, relay_id: str, ids: Sequence[int], lease: timedelta, now: datetime
    ) -> None:
        """Push the lease of rows still being worked on."""
        ...

    async def reap_expired(self, now: datetime) -> int:
        """Return rows with expired leases to the queue; returns how many."""
        ...
