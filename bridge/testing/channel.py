"""An in-memory :class:`bridge.ports.Channel` with scripted failures."""

from __future__ import annotations

__all__ = ["MemoryChannel"]

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.domain import Event
from bridge.errors import SendError
from bridge.ports import Notification, SendReceipt


@dataclass
class MemoryChannel:
    """Records what it is asked to send; raises the scripted errors first, in order.

    Attributes:
        sent: every notification accepted, in order.
        script: errors to raise on the next sends (one per send), before succeeding.
    """

    name: str = "whatsapp"
    sent: list[Notification] = field(default_factory=list)
    script: deque[SendError] = field(default_factory=deque)
    attempts: int = 0

    async def send(self, notification: Notification) -> SendReceipt:
        """Raise the next scripted error, or record the notification and accept it."""
        self.attempts += 1
        if self.script:
            raise self.script.popleft()
        self.sent.append(notification)
        return SendReceipt(message_id=f"wamid.mem{len(self.sent)}", accepted_status="accepted")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> list[Event]:
        """The memory channel receives no webhooks."""
        return []
