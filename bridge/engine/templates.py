"""Template state: what Meta says about each template, and holding sends it would reject.

Templates are declared as code in the mappings; ``bridge templates sync`` reads the WhatsApp
Business Account's templates into the store and ``bridge templates check`` lists every
difference before anything is sent. Meta can also pause or disable a template at any time
(quality); the ``message_template_status_update`` webhook arrives as a
:class:`bridge.domain.TemplateStatusChanged` event, and from then on every send of that template
is *held* (not failed, not burned against Meta's error counters) and an alert is logged, until a
``REINSTATED``/``APPROVED`` update or a sync says it is usable again.
"""

from __future__ import annotations

__all__ = ["BLOCKING_STATUSES", "TemplateStatuses"]

from datetime import datetime, timedelta
from typing import Any

import orjson
from structlog.typing import FilteringBoundLogger

from bridge.domain import Event, TemplateStatusChanged
from bridge.ports import Clock, PluginState
from bridge.store import AuditLog

#: Template states in which Meta rejects sends (132015/132016/132001).
BLOCKING_STATUSES = frozenset({
    "PAUSED", "DISABLED", "REJECTED", "DELETED", "PENDING_DELETION", "LIMIT_EXCEEDED",
    "LOCKED", "ARCHIVED", "PENDING", "IN_APPEAL",
})
#: How long statuses are cached between reads (sends check every template they use).
_CACHE = timedelta(seconds=5)


class TemplateStatuses:
    """Per ``(name, language)`` status, kept in plugin state (shared by every daemon)."""

    def __init__(self, state: PluginState, clock: Clock, audit: AuditLog,
                 log: FilteringBoundLogger) -> None:
        self._state = state
        self._clock = clock
        self._audit = audit
        self._log = log
        self._cache: dict[str, str] = {}
        self._loaded_at: datetime | None = None

    async def statuses(self) -> dict[str, str]:
        """``"name|language" → status`` for every template heard of."""
        now = self._clock.now()
        if self._loaded_at is None or now - self._loaded_at > _CACHE:
            raw = await self._state.get("statuses")
            self._cache = orjson.loads(raw) if raw else {}
            self._loaded_at = now
        return dict(self._cache)

    async def blocked(self, name: str, language: str) -> str | None:
        """The blocking status of a template, or None when it may be sent."""
        status = (await self.statuses()).get(f"{name}|{language}")
        return status if status in BLOCKING_STATUSES else None

    async def record(self, updates: dict[str, str], *, source: str) -> None:
        """Store statuses (from a webhook or a sync); alert on templates that became unusable."""
        current = await self.statuses()
        for key, status in updates.items():
            if status in BLOCKING_STATUSES and current.get(key) != status:
                name, _, language = key.partition("|")
                self._log.error("template.unusable", template=name, language=language,
                                status=status, source=source, alert=True)
                await self._audit.append("whatsapp", "template.blocked", f"template:{key}",
                                         {"status": status, "source": source})
        current.update(updates)
        await self._state.set("statuses", orjson.dumps(current).decode())
        self._cache, self._loaded_at = current, self._clock.now()

    async def record_sync(self, templates: list[dict[str, Any]]) -> None:
        """Statuses of every template read from the WABA by ``bridge templates sync``."""
        await self.record({f"{t.get('name')}|{t.get('language')}": str(t.get("status", ""))
                           for t in templates}, source="sync")
        await self._state.set("snapshot", orjson.dumps(templates).decode())

    async def snapshot(self) -> list[dict[str, Any]] | None:
        """The templates read by the last sync, or None when never synced."""
        raw = await self._state.get("snapshot")
        return list(orjson.loads(raw)) if raw else None

    async def on_status_changed(self, evt: Event) -> str | None:
        """Event handler for ``template.status_changed``."""
        assert isinstance(evt, TemplateStatusChanged)  # noqa: S101 - routed by type
        key = f"{evt.name}|{evt.language}"
        if evt.status in ("CATEGORY_CHANGED", "QUALITY_CHANGED"):
            # not a send-blocking state; a move to MARKETING changes price and opt-out rules
            self._log.warning("template.changed", template=evt.name, language=evt.language,
                              change=evt.status, value=evt.reason)
            await self._audit.append("whatsapp", "template.changed", f"template:{key}",
                                     {"change": evt.status, "value": evt.reason})
            return None
        status = "APPROVED" if evt.status in ("REINSTATED", "UNARCHIVED") else evt.status
        await self.record({key: status}, source="webhook")
        return None
