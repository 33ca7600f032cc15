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

__all__ = ["HOLD", "STORE_ONLY_TYPES", "EventProcessor", "Handler"]

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from structlog.typing import FilteringBoundLogger

from bridge.domain import Event
from bridge.metrics import Metrics
from bridge.ports import Clock
from bridge.store.database import Database, UnitOfWork
from bridge.store.sealing import PLAIN, DataCipher, SealedDataError
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
#: Event types whose handlers (planner, delivery) do store work only, so they may share a unit
#: of work: a unit holds SQLite's writer, which must never wait on the network.
STORE_ONLY_TYPES = frozenset(
    {
        "appointment.booked",
        "appointment.rescheduled",
        "appointment.updated",
        "appointment.cancelled",
        "appointment.deleted",
        "appointment.noshow",
        "result.available",
        "patient.updated",
        "status.updated",
    }
)
#: Ingest counts as busy for this long after its last group commit.
_BUSY_WINDOW = 0.05


class EventProcessor:
    """Runs handlers over pending events, in ``seq`` order, as the elected leader.

    Args:
        db: the database.
        clock: the clock port.
        handlers: handler per event type; events of other types are marked done.
        metrics: counts processed events.
        log: a bound logger.
        batch_size: events per tick.
        idle_seconds: wait after a tick that found nothing.
        gather_seconds: wait after a short batch, so the next tick finds more than one event.
        busy_batch: events per tick while the inbox is committing (senders wait for ACKs).
        busy_pause_seconds: wait between such ticks; the loop and the writer go to ingest.
            Short, because a busy inbox is not only a flood from the HIS: status webhooks
            during a campaign keep it busy for as long as the campaign, and their events
            must keep being processed.
        shared_types: event types whose handlers only use the store; they share one unit of
            work per batch. Others (a reply may ask the EHR for free slots over HTTP) run
            outside any unit, so the SQLite writer is never held across a network call.
        cipher: opens event payloads sealed by the inbox when a data key is configured.
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
        gather_seconds: float = 0.02,
        busy_batch: int = 25,
        busy_pause_seconds: float = 0.05,
        shared_types: Collection[str] = STORE_ONLY_TYPES,
        cipher: DataCipher = PLAIN,
    ) -> None:
        self._db = db
        self._cipher = cipher
        self._clock = clock
        self._handlers = dict(handlers)
        self._metrics = metrics
        self._log = log
        self._batch = batch_size
        self._idle = idle_seconds
        self._gather = gather_seconds
        self._busy_batch = busy_batch
        self._busy_pause = busy_pause_seconds
        self._shared = frozenset(shared_types)
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
                pause = self._idle
            elif self._db.urgent_within(_BUSY_WINDOW):
                # Ingest is busy: acknowledging senders goes first. Events are durable and
                # wait; a small bite now and then keeps them moving without taking the loop.
                pause = self._busy_pause
            elif handled < self._batch:
                # The queue is drained: wait, so the next tick finds a batch worth its fixed
                # cost instead of chasing every single message.
                pause = self._gather
            else:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def tick(self) -> int:
        """Handle one batch of pending events if this process leads. Returns how many.

        The batch runs in units of work (:meth:`bridge.store.Database.unit_of_work`): every
        store call of its handlers joins one transaction, each event inside a savepoint so a
        failing handler undoes only its own writes, and the events' outcomes are written in
        the same transaction. A unit ends early when the inbox waits for the SQLite writer
        lock, so acknowledgements never queue behind a whole batch. A crash before a unit
        commits replays its events, which the idempotent handlers allow.
        """
        if not await self._lead():
            return 0
        now = self._clock.now()
        # While senders are waiting for ACKs, take small bites (see run()).
        limit = self._busy_batch if self._db.urgent_within(_BUSY_WINDOW) else self._batch
        rows: Sequence[Any]
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(event.c.seq, event.c.payload, event.c.occurred_at)
                    .where(
                        or_(
                            event.c.state == "pending",
                            and_(event.c.state == "held", event.c.lease_expires_at <= now),
                        )
                    )
                    .order_by(event.c.seq)
                    .limit(limit)
                )
            ).all()
        if self._cipher.enabled:
            rows = [_Pending(r.seq, self._open(r.payload), r.occurred_at) for r in rows]
        done = 0
        while done < len(rows):
            row = rows[done]
            if not self._may_share(row.payload):
                # its handler may wait on the network: no unit may hold the writer for it
                outcome = await self._handle(None, row.seq, row.payload, row.occurred_at)
                await self._finish([outcome])
                done += 1
                continue
            async with self._db.unit_of_work() as unit:
                outcomes: list[dict[str, Any]] = []
                while done < len(rows) and not (outcomes and unit.contended):
                    row = rows[done]
                    if not self._may_share(row.payload):
                        break
                    outcomes.append(await self._handle(unit, row.seq, row.payload, row.occurred_at))
                    done += 1
                    # Statements run inline on SQLite: let the loop read frames (and the
                    # inbox ask for the lock) between two events.
                    await asyncio.sleep(0)
                await self._finish(outcomes)
        return len(rows)

    def _open(self, payload: Any) -> Any:
        """The event's payload unsealed; None when it cannot be opened (changed in the
        database), which :meth:`_handle` records as an unreadable event."""
        try:
            return self._cipher.open_json(payload)
        except SealedDataError:
            return None

    def _may_share(self, payload: Any) -> bool:
        return isinstance(payload, dict) and payload.get("type") in self._shared

    async def _handle(
        self, unit: UnitOfWork | None, seq: int, payload: dict[str, Any], occurred: Any
    ) -> dict[str, Any]:
        now = self._clock.now()
        try:
            evt = Event.unmarshal(payload)
        except (KeyError, ValueError, TypeError) as exc:
            return _outcome(seq, "failed", now, f"unreadable event: {type(exc).__name__}")
        handler = self._handlers.get(evt.type)
        result: str | None = None
        if handler is not None:
            try:
                # in a unit, a failure undoes this event's writes only
                async with unit.savepoint() if unit else contextlib.nullcontext():
                    result = await handler(evt)
            except Exception as exc:  # noqa: BLE001 - isolate one poison event
                self._metrics.events_processed.labels(evt.type, "failed").inc()
                self._log.error(
                    "events.handler_failed",
                    event_id=evt.event_id,
                    type=evt.type,
                    error=type(exc).__name__,
                )
                return _outcome(seq, "failed", now, type(exc).__name__)
        if result == HOLD:
            self._metrics.events_processed.labels(evt.type, "held").inc()
            retry = timedelta(seconds=5) if now - occurred < _HOLD_FOR else _GIVEN_UP
            return _outcome(seq, "held", now, None, now + retry)
        self._metrics.events_processed.labels(evt.type, "done").inc()
        return _outcome(seq, "done", now, None)

    async def _finish(self, outcomes: list[dict[str, Any]]) -> None:
        stmt = (
            update(event)
            .where(event.c.seq == bindparam("b_seq"))
            .values(
                state=bindparam("b_state"),
                error=bindparam("b_error"),
                processed_at=bindparam("b_at", type_=event.c.processed_at.type),
                lease_expires_at=bindparam("b_retry", type_=event.c.lease_expires_at.type),
            )
        )
        async with self._db.write() as conn:
            await conn.execute(stmt, outcomes)

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
            current = (
                await conn.execute(
                    select(kv.c.value).where(kv.c.name == _LEADER_KEY).with_for_update()
                )
            ).scalar_one_or_none()
            if current is not None:
                owner, _, expires = current.partition("|")
                if owner != self.owner and expires > now.isoformat():
                    self._leading_until = None
                    return False
            stmt = insert(kv).values(name=_LEADER_KEY, value=value, updated_at=now)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["name"], set_={"value": value, "updated_at": now}
                )
            )
        self._leading_until = now + _LEADER_LEASE
        return True


class _Pending(NamedTuple):
    """A pending event as read, with its payload unsealed."""

    seq: int
    payload: Any
    occurred_at: Any


def _outcome(seq: int, state: str, at: Any, error: str | None, retry: Any = None) -> dict[str, Any]:
    return {"b_seq": seq, "b_state": state, "b_error": error, "b_at": at, "b_retry": retry}
