"""The outbox relay: the only code that sends to a patient channel.

Each tick it leases due rows, turns each into a :class:`bridge.ports.Notification` (the
``prepare`` hook: consent, appointment still as planned, rendering), sends it through the row's
channel, and releases every row with its outcome. The exception type decides what happens
(STYLE.md §6): a retryable :class:`bridge.errors.SendError` goes back to ``pending`` with capped
exponential backoff (never sooner than the provider's Retry-After) until ``max_attempts``, then
dead-letter; a permanent one is ``failed`` with its code kept; a
:class:`bridge.errors.SkipNotification` cancels the row.

While a batch is in flight a keeper task extends its leases, so a slow Graph API never lets a
second relay take a row that is still being sent. On shutdown, rows not yet sent are handed back.
"""

from __future__ import annotations

__all__ = ["Relay", "RelayStats", "notification_from_payload"]

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from structlog.typing import FilteringBoundLogger

from bridge.config import RelaySettings
from bridge.engine.backoff import compute_backoff
from bridge.errors import MappingError, SendError, SendHeld, SkipNotification
from bridge.metrics import Metrics
from bridge.ports import AcquiredRow, Channel, Clock, Notification, Outbox, ReleaseResult

#: Turns a leased row into what the channel sends; may raise SkipNotification or MappingError.
PrepareHook = Callable[[AcquiredRow], Awaitable[Notification]]
#: Told about a whole batch once its outcomes are committed (follow-ups, audit).
ReleasedHook = Callable[[Sequence[tuple[AcquiredRow, ReleaseResult]]], Awaitable[None]]


async def notification_from_payload(row: AcquiredRow) -> Notification:
    """The default ``prepare``: the row's payload already holds ``to``, ``kind`` and ``content``.

    Raises:
        MappingError: the payload lacks one of them.
    """
    payload = row.payload
    try:
        return Notification(
            outbox_id=row.id,
            to=str(payload["to"]),
            kind=str(payload["kind"]),
            content=payload["content"],
        )
    except KeyError as exc:
        raise MappingError(f"outbox row {row.id}", f"payload lacks {exc.args[0]!r}") from None


@dataclass(slots=True)
class RelayStats:
    """Counters for one relay (also exported as metrics)."""

    sent: int = 0
    retried: int = 0
    failed: int = 0
    dead: int = 0
    cancelled: int = 0


class Relay:
    """Leases due outbox rows and sends them.

    Args:
        outbox: the outbox port.
        channels: channel by name (``whatsapp``).
        clock: the clock port.
        settings: ``[relay]`` settings.
        metrics: where to count.
        log: a bound logger.
        prepare: row → notification; defaults to :func:`notification_from_payload`.
        after_release: called with the batch once its outcomes are committed.
        relay_id: defaults to ``host:pid:random`` so two processes never share one.
    """

    def __init__(
        self,
        *,
        outbox: Outbox,
        channels: Mapping[str, Channel],
        clock: Clock,
        settings: RelaySettings,
        metrics: Metrics,
        log: FilteringBoundLogger,
        prepare: PrepareHook | None = None,
        after_release: ReleasedHook | None = None,
        relay_id: str | None = None,
    ) -> None:
        self.relay_id = relay_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._outbox = outbox
        self._channels = channels
        self._clock = clock
        self._settings = settings
        self._metrics = metrics
        self._log = log.bind(relay_id=self.relay_id)
        self._prepare = prepare or notification_from_payload
        self.after_release = after_release
        self._lease = timedelta(seconds=settings.lease_seconds)
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self.stats = RelayStats()

    async def tick(self) -> int:
        """Lease one batch of due rows, send them, release them. Returns how many were handled."""
        rows = await self._outbox.acquire(
            self.relay_id, self._lease, self._settings.batch_size, self._clock.now()
        )
        if not rows:
            return 0
        keeper = asyncio.create_task(self._keep_leases([r.id for r in rows]))
        try:
            results = await asyncio.gather(*(self._handle(row) for row in rows))
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self._outbox.release(self.relay_id, results)
        if self.after_release is not None:
            try:
                await self.after_release(list(zip(rows, results, strict=True)))
            except Exception as exc:  # noqa: BLE001 - follow-ups must not undo the sends
                self._log.error("relay.after_release_failed", error=type(exc).__name__)
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; idle between empty ticks."""
        while not stop.is_set():
            try:
                handled = await self.tick()
            except Exception as exc:  # noqa: BLE001 - the relay must outlive one bad tick
                self._log.error("relay.tick_failed", error=type(exc).__name__)
                handled = 0
            if handled == 0 or stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._settings.tick_seconds)

    async def _keep_leases(self, ids: list[int]) -> None:
        interval = max(0.5, self._settings.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            await self._outbox.extend_leases(self.relay_id, ids, self._lease, self._clock.now())

    async def _handle(self, row: AcquiredRow) -> ReleaseResult:
        log = self._log.bind(outbox_id=row.id, kind=row.kind, attempt=row.attempts)
        async with self._semaphore:
            channel = self._channels.get(row.channel)
            if channel is None:
                self.stats.failed += 1
                log.error("relay.unknown_channel", channel=row.channel)
                return ReleaseResult(
                    id=row.id,
                    failed=True,
                    error_code="unknown_channel",
                    error_detail=f"no channel named {row.channel}",
                )
            try:
                notification = await self._prepare(row)
            except SkipNotification as skip:
                self.stats.cancelled += 1
                log.info("relay.skipped", reason=skip.reason)
                return ReleaseResult(
                    id=row.id, cancelled=True, error_code="skipped", error_detail=skip.reason
                )
            except MappingError as exc:
                self.stats.failed += 1
                log.warning("relay.unmappable", error=str(exc))
                return ReleaseResult(
                    id=row.id, failed=True, error_code="mapping", error_detail=str(exc)
                )
            except SendError as exc:  # e.g. a paused template holds the send
                return self._after_error(row, exc, log)
            except (KeyError, TypeError, ValueError) as exc:
                self.stats.failed += 1
                log.error("relay.bad_payload", error=type(exc).__name__)
                return ReleaseResult(
                    id=row.id,
                    failed=True,
                    error_code="bad_payload",
                    error_detail=type(exc).__name__,
                )
            started = time.perf_counter()
            try:
                receipt = await channel.send(notification)
            except SendError as exc:
                return self._after_error(row, exc, log)
            except Exception as exc:  # noqa: BLE001 - an unknown failure is retried, not lost
                log.error("relay.send_crashed", error=type(exc).__name__)
                wrapped = SendError("internal", type(exc).__name__)
                wrapped.retryable = True
                return self._after_error(row, wrapped, log)
            finally:
                self._metrics.send_latency.labels(row.channel).observe(
                    time.perf_counter() - started
                )
        self.stats.sent += 1
        self._metrics.sends.labels(row.channel, "sent").inc()
        log.debug("relay.sent", wamid=receipt.message_id)
        return ReleaseResult(id=row.id, external_id=receipt.message_id)

    def _after_error(
        self, row: AcquiredRow, exc: SendError, log: FilteringBoundLogger
    ) -> ReleaseResult:
        provider = str(exc.provider_code) if exc.provider_code is not None else ""
        self._metrics.send_errors.labels(exc.code, provider).inc()
        detail = str(exc)[:500]
        if isinstance(exc, SendHeld):
            self._metrics.sends.labels(row.channel, "held").inc()
            log.debug("relay.held", limit=exc.limit)
            return ReleaseResult(
                id=row.id,
                retry_at=exc.hold_until,
                refund_attempt=True,
                error_code="held",
                error_detail=detail,
            )
        if not exc.retryable:
            self.stats.failed += 1
            self._metrics.sends.labels(row.channel, "failed").inc()
            log_method = log.error if exc.alert else log.warning
            log_method(
                "relay.failed", code=exc.code, provider_code=exc.provider_code, alert=exc.alert
            )
            return ReleaseResult(id=row.id, failed=True, error_code=exc.code, error_detail=detail)
        if row.attempts >= self._settings.max_attempts:
            self.stats.dead += 1
            self._metrics.sends.labels(row.channel, "dead").inc()
            log.error("relay.dead_letter", code=exc.code, provider_code=exc.provider_code)
            return ReleaseResult(id=row.id, dead=True, error_code=exc.code, error_detail=detail)
        delay = compute_backoff(
            row.attempts,
            base=self._settings.backoff_base_seconds,
            maximum=self._settings.backoff_max_seconds,
        )
        delay = max(delay, exc.retry_after or 0.0)
        self.stats.retried += 1
        self._metrics.sends.labels(row.channel, "retry").inc()
        log.info(
            "relay.retry", code=exc.code, provider_code=exc.provider_code, delay_s=round(delay, 2)
        )
        return ReleaseResult(
            id=row.id,
            retry_at=self._clock.now() + timedelta(seconds=delay),
            error_code=exc.code,
            error_detail=detail,
        )
