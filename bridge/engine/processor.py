"""The event processor: consumes the ``event`` table in order and hands each event to its handler.

Events are durable before the sender is acknowledged; processing them is a separate, replayable
step, so a crash between the two loses nothing: on restart the processor finds the event still
``pending`` and runs it again. Handlers are therefore idempotent (outbox rows have idempotency
keys, delivery statuses only move forward, decisions carry a command id).

One processor at a time, even with several daemons on one PostgreSQL: order matters per
appointment (a cancel must not overtake its booking), and handling events is cheap next to
sending, so the daemons elect a leader through a lease row in ``kv`` and every daemon still runs
its own relay (the part that scales out).

A handler that raises is recorded on its event (``failed`` with the exception type) and the
processor moves on: one poison event must not stop the queue. A handler may also answer
:data:`HOLD` to have the event looked at again later (a status for a message we have not
recorded yet).
"""

from __future__ import annotations

__all__ = ["HOLD", "EventProcessor", "Handler"]

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from structlog.typing import FilteringBoundLogger

from bridge.domain import Event
from bridge.metrics import Metrics
from bridge.ports import Clock
from bridge.store.database import Database
from bridge.store.tables import event, kv

#: Returned by a handler that wants the event retried later.
HOLD = "hold"
#: A handler does the work for one event type; returns None (done) or HOLD.
Handler = Callable[[Event], Awaitable[str | None]]

#: How long a leader's lease lasts without renewal.
_LEADER_LEASE = timedelta(seconds=15)
#: How long a held event is retried before it is given up (and kept as ``held``): statuses of
#: messages sent by other apps on the same WhatsApp account never match, and are normal.
_HOLD_FOR = timedelta(minutes=10)
#: A held event that outlived ``_HOLD_FOR`` stays ``held`` for operators but is not retried.
_GIVEN_UP = timedelta(days=3650)
_LEADER_KEY = "engine.event-processor.leader"


class EventProcessor:
    """Runs handlers over pending events, in ``seq`` order, as the elected leader.

    Args:
        db: the database.
        clock: the clock port.
        handlers: handler per event type; events of other types are marked done.
        metrics: counts processed events.
        log: a bound logger.
    """

    def __init__(
        self,
        db: Database,
        clock: Clock,
        handlers: Mapping[str, Handler],
        metrics: Metrics,
        log: FilteringBoundLogger,
        *,
        batch_size: int = 200,
        idle_seconds: float = 0.1,
    ) -> None:
        self._db = db
        self._clock = clock
        self._handlers = dict(handlers)
        self._metrics = metrics
        self._log = log
        self._batch = batch_size
        self._idle = idle_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._leading_until: Any = None

    async def run(self, stop: asyncio.Event) -> None:
        """Process until ``stop`` is set."""
        while not stop.is_set():
            try:
                handled = await self.tick()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive a bad batch
                self._log.error("events.tick_failed", error=type(exc).__name__)
                handled = 0
            if handled == 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._idle)

    async def tick(self) -> int:
        """Handle one batch of pending events if this process leads. Returns how many."""
        if not await self._lead():
            return 0
        now = self._clock.now()
        async with self._db.read() as conn:
            rows = (await conn.execute(
                select(event.c.seq, event.c.payload, event.c.state, event.c.occurred_at)
                .where(or_(event.c.state == "pending",
                           and_(event.c.state == "held", event.c.lease_expires_at <= now)))
                .order_by(event.c.seq).limit(self._batch)
            )).all()
        for row in rows:
            await self._handle(row.seq, row.payload, row.state, row.occurred_at)
        return len(rows)

    async def _handle(self, seq: int, payload: dict[str, Any], state: str, occurred: Any) -> None:
        try:
            evt = Event.unmarshal(payload)
        except (KeyError, ValueError, TypeError) as exc:
            await self._finish(seq, "failed", f"unreadable event: {type(exc).__name__}")
            return
        handler = self._handlers.get(evt.type)
        result: str | None = None
        if handler is not None:
            try:
                result = await handler(evt)
            except Exception as exc:  # noqa: BLE001 - isolate one poison event
                self._metrics.events_processed.labels(evt.type, "failed").inc()
                self._log.error("events.handler_failed", event_id=evt.event_id, type=evt.type,
                                error=type(exc).__name__)
                await self._finish(seq, "failed", type(exc).__name__)
                return
        if result == HOLD and self._clock.now() - occurred < _HOLD_FOR:
            self._metrics.events_processed.labels(evt.type, "held").inc()
            await self._finish(seq, "held", None, retry_in=timedelta(seconds=5))
            return
        self._metrics.events_processed.labels(evt.type, "done").inc()
        await self._finish(seq, "done" if result != HOLD else "held", None)

    async def _finish(
        self, seq: int, state: str, error: str | None, retry_in: timedelta | None = None
    ) -> None:
        now = self._clock.now()
        values: dict[str, Any] = {"state": state, "error": error, "processed_at": now}
        if retry_in is not None:
            values["lease_expires_at"] = now + retry_in
        elif state == "held":
            values["lease_expires_at"] = now + _GIVEN_UP
        async with self._db.write() as conn:
            await conn.execute(update(event).where(event.c.seq == seq).values(**values))

    async def _lead(self) -> bool:
        """Take or renew the leader lease; True when this processor leads.

        A lease with more than half its time left is trusted without a database round trip,
        so an idle daemon does not commit ten times a second.
        """
        now = self._clock.now()
        if self._leading_until is not None and now < self._leading_until - _LEADER_LEASE / 2:
            return True
        value = f"{self.owner}|{(now + _LEADER_LEASE).isoformat()}"
        insert = sqlite.insert if self._db.is_sqlite else postgresql.insert
        async with self._db.write() as conn:
            current = (await conn.execute(
                select(kv.c.value).where(kv.c.name == _LEADER_KEY).with_for_update()
            )).scalar_one_or_none()
            if current is not None:
                owner, _, expires = current.partition("|")
                if owner != self.owner and expires > now.isoformat():
                    self._leading_until = None
                    return False
            stmt = insert(kv).values(name=_LEADER_KEY, value=value, updated_at=now)
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=["name"], set_={"value": value, "updated_at": now}))
        self._leading_until = now + _LEADER_LEASE
        return True
