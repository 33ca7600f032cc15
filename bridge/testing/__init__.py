"""Fakes of the ports, for our tests and for plugin authors' tests (STYLE.md §8).

Every port has an in-memory implementation here, so a unit test wires real code to fakes
instead of mocking our own functions.
"""

from __future__ import annotations

__all__ = ["FixedClock", "MemoryChannel", "MemoryConnector", "MemorySink"]

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bridge.domain import Event, InboundMessage, IngestOutcome
from bridge.testing.channel import MemoryChannel
from bridge.testing.connector import MemoryConnector


@dataclass
class FixedClock:
    """A clock that only moves when told to."""

    current: datetime

    def now(self) -> datetime:
        """Return the current fake time."""
        return self.current

    def advance(self, delta: timedelta) -> None:
        """Move time forward."""
        self.current += delta


@dataclass
class MemorySink:
    """An :class:`bridge.ports.EventSink` that keeps messages in lists, with the store's dedupe.

    Dedupe identity is ``(connector, sender, source_id)``; the same identity with the same
    payload hash is a duplicate, with another hash a conflict (kept and processed).
    """

    messages: list[InboundMessage] = field(default_factory=list)
    outcomes: list[IngestOutcome] = field(default_factory=list)
    _seen: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)

    async def ingest(self, message: InboundMessage) -> IngestOutcome:
        """Keep ``message`` and return its outcome."""
        key = (message.connector, message.sender, message.source_id)
        hashes = self._seen.setdefault(key, set())
        if message.translation.fatal:
            outcome = IngestOutcome.QUARANTINED
        elif message.payload_hash in hashes:
            outcome = IngestOutcome.DUPLICATE
        elif hashes:
            outcome = IngestOutcome.CONFLICT
        else:
            outcome = IngestOutcome.ACCEPTED
        hashes.add(message.payload_hash)
        if outcome is not IngestOutcome.DUPLICATE:
            self.messages.append(message)
        self.outcomes.append(outcome)
        return outcome

    @property
    def events(self) -> list[Event]:
        """Every event of every kept message, in order."""
        return [e for m in self.messages for e in m.translation.events]
