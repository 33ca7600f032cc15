"""Counters the sandbox keeps for ``GET /_sandbox/stats`` (ids and numbers only, never content)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Stats"]


@dataclass(slots=True)
class Stats:
    """What happened since start or the last reset.

    Args:
        accepted: Messages answered 200 with a wamid.
        read_receipts: Mark-as-read calls accepted.
        errors: Refusals by Graph error code (as a string key, JSON-friendly).
        faults: Injected faults by kind (``status_429``, ``status_5xx``, ``timeout``, ``reset``).
        statuses_scheduled: Status updates queued for the bridge.
        inbound_scheduled: Simulated patient messages queued for the bridge.
        webhook_posts: Webhook POSTs answered 200.
        webhook_retries: Webhook POSTs retried after a non-200 or a connection error.
        webhook_updates_delivered: Updates inside POSTs answered 200.
        webhook_updates_failed: Updates given up after the last attempt.
        webhook_updates_dropped: Updates dropped because the queue was full.
        max_rate_per_second: Highest number of accepted messages in any 1-second window.
    """

    accepted: int = 0
    read_receipts: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    statuses_scheduled: int = 0
    inbound_scheduled: int = 0
    webhook_posts: int = 0
    webhook_retries: int = 0
    webhook_updates_delivered: int = 0
    webhook_updates_failed: int = 0
    webhook_updates_dropped: int = 0
    max_rate_per_second: int = 0

    def clear(self) -> None:
        """Set every counter back to zero (the dispatcher keeps a reference to this object)."""
        for f in fields(self):
            setattr(self, f.name, Counter() if f.name in ("errors", "faults") else 0)

    def as_json(self, *, pending_webhooks: int) -> dict[str, Any]:
        """Return the counters as a JSON object.

        Args:
            pending_webhooks: Updates queued or in flight right now.
        """
        return {
            "accepted": self.accepted,
            "read_receipts": self.read_receipts,
            "errors": dict(self.errors),
            "faults": dict(self.faults),
            "statuses_scheduled": self.statuses_scheduled,
            "inbound_scheduled": self.inbound_scheduled,
            "webhook_posts": self.webhook_posts,
            "webhook_retries": self.webhook_retries,
            "webhook_updates_delivered": self.webhook_updates_delivered,
            "webhook_updates_failed": self.webhook_updates_failed,
            "webhook_updates_dropped": self.webhook_updates_dropped,
            "webhooks_pending": pending_webhooks,
            "max_rate_per_second": self.max_rate_per_second,
        }
