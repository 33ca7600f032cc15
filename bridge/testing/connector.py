"""An in-memory EHR: a :class:`bridge.ports.Connector` and :class:`bridge.ports.SlotFinder`."""

from __future__ import annotations

__all__ = ["MemoryConnector"]

from collections import deque
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from structlog.typing import FilteringBoundLogger

from bridge.domain import AppointmentRef, CommandResult, FreeSlot, SchedulingCommand
from bridge.errors import ConnectorError
from bridge.ports import EventSink


@dataclass
class MemoryConnector:
    """Records every command; answers from ``script`` first (errors or results), then applies.

    Attributes:
        applied: commands the "EHR" accepted, in order.
        slots: what ``free_slots`` offers.
    """

    name: str = "memory"
    applied: list[SchedulingCommand] = field(default_factory=list)
    attempts: list[SchedulingCommand] = field(default_factory=list)
    script: deque[ConnectorError | CommandResult] = field(default_factory=deque)
    slots: list[FreeSlot] = field(default_factory=list)
    sink: EventSink | None = None

    async def start(self, exit_stack: AsyncExitStack, sink: EventSink,
                    log: FilteringBoundLogger) -> None:
        """Keep the sink so tests can push events as the EHR would."""
        self.sink = sink

    async def apply(self, command: SchedulingCommand) -> CommandResult:
        """Apply, or answer with the next scripted error or result."""
        self.attempts.append(command)
        if self.script:
            scripted = self.script.popleft()
            if isinstance(scripted, ConnectorError):
                raise scripted
            if scripted.applied:
                self.applied.append(command)
            return scripted
        self.applied.append(command)
        return CommandResult(applied=True, verified=True, code="AA")

    async def free_slots(self, appointment: AppointmentRef, limit: int) -> Sequence[FreeSlot]:
        """The configured slots, up to ``limit``."""
        return self.slots[:limit]
