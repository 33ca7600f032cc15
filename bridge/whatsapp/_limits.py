"""Meta's sending limits, enforced on our side before Meta has to (reference whatsapp.md §4).

* :class:`RateLimiter`: messages per second per phone-number id (§4.1: 80 by default, up to
  1,000), with a global pause after 130429.
* :class:`PatientSpacing`: one message per patient every 6 s by default (§4.1 pair rate), and
  4^x s back-off of that patient only after 131056.
* :class:`TierCap`: the messaging tier, unique patients per rolling 24 h (§4.2). It *holds*
  sends (answers "not before T") instead of letting Meta burn them with errors.
* :class:`CustomerWindow`: the 24-hour customer-service window (§4.3): free-form and
  interactive messages only while it is open; templates always.

Everything is driven by an injected :class:`~bridge.ports.Clock`; the decisions are pure
functions of the clock and what was recorded, so tests move time instead of sleeping. Only
:meth:`RateLimiter.acquire` waits (through an injectable ``sleep``).
"""

from __future__ import annotations

__all__ = [
    "CustomerWindow",
    "PatientSpacing",
    "RateLimiter",
    "SendHeld",
    "SendLimits",
    "Sleep",
    "TierCap",
    "WindowDecision",
]

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bridge.errors import SendHeld
from bridge.ports import Clock

#: How to wait: ``asyncio.sleep``, or a fake in tests.
Sleep = Callable[[float], Awaitable[None]]


class RateLimiter:
    """Holds sends of one phone-number id to at most ``rate`` per second.

    A token bucket whose tokens are taken when a sender actually goes, not when it queued, with
    a small capacity: over any interval T at most ``capacity + rate * T`` sends pass, however
    late the event loop wakes waiters up. Waiters queue in FIFO order behind one lock, so only
    the head of the queue sleeps.

    Args:
        clock: where "now" comes from.
        rate: messages per second (0 < rate ≤ 1,000).
        capacity: most sends that may go back to back after an idle spell; default 20 ms worth
            (at least 1), which absorbs timer overshoot without visible bursts.
        sleep: how to wait (``asyncio.sleep``; tests inject one that moves a fake clock).
    """

    def __init__(
        self,
        clock: Clock,
        rate: float = 80.0,
        *,
        capacity: float | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not 0 < rate <= 1000:
            raise ValueError("rate must be within (0, 1000] messages/s")
        self._clock = clock
        self._rate = float(rate)
        self._capacity = capacity if capacity is not None else max(1.0, rate * 0.02)
        if self._capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._sleep = sleep
        self._tokens = 1.0
        self._updated = clock.now().timestamp()
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self._rate

    def try_take(self) -> float:
        """Take a token if one is there and return 0; else return the seconds until one is.

        Pure given the clock: no waiting, no side effect unless a token is taken.
        """
        now = self._clock.now().timestamp()
        if now < self._paused_until:
            return self._paused_until - now
        elapsed = max(0.0, now - max(self._updated, self._paused_until))
        self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
        self._updated = now
        # A microsecond early is on time: clocks tick in microseconds, and a wait shorter than
        # one tick would never end.
        if self._tokens + 1e-6 * self._rate >= 1.0:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self._rate

    async def acquire(self) -> None:
        """Wait until this caller may send (FIFO among callers)."""
        async with self._lock:
            while (wait := self.try_take()) > 0:
                await self._sleep(wait)

    def pause(self, seconds: float) -> None:
        """Stop every send for ``seconds`` (after 130429); no burst follows the pause."""
        until = self._clock.now().timestamp() + max(0.0, seconds)
        if until > self._paused_until:
            self._paused_until = until
            self._tokens = 0.0


class PatientSpacing:
    """At most one message per patient every ``spacing`` s; 4^x s back-off after 131056.

    Args:
        clock: where "now" comes from.
        spacing: seconds between two messages to one patient (Meta's pair rate: 6 s).
        max_backoff_exponent: cap of x in 4^x s (5 → 1,024 s).
    """

    def __init__(self, clock: Clock, spacing: float = 6.0, *, max_backoff_exponent: int = 5):
        if spacing < 0:
            raise ValueError("spacing must be >= 0")
        self._clock = clock
        self._spacing = timedelta(seconds=spacing)
        self._max_exp = max_backoff_exponent
        self._not_before: dict[str, datetime] = {}
        self._strikes: dict[str, int] = {}

    def check(self, patient: str) -> datetime | None:
        """None when ``patient`` may get a message now, else the earliest time it may."""
        until = self._not_before.get(patient)
        now = self._clock.now()
        return until if until is not None and until > now else None

    def record_send(self, patient: str) -> None:
        """A message to ``patient`` is going out now: the next waits ``spacing``."""
        now = self._clock.now()
        current = self._not_before.get(patient)
        until = now + self._spacing
        self._not_before[patient] = max(until, current) if current else until
        self._prune(now)

    def pair_limited(self, patient: str) -> datetime:
        """Meta answered 131056 for ``patient``: back off 4^x s (x = strikes so far).

        Returns:
            The time before which this patient gets nothing.
        """
        strikes = self._strikes.get(patient, 0)
        until = self._clock.now() + timedelta(seconds=4 ** min(strikes, self._max_exp))
        self._strikes[patient] = strikes + 1
        self._not_before[patient] = max(until, self._not_before.get(patient, until))
        return self._not_before[patient]

    def delivered(self, patient: str) -> None:
        """A send to ``patient`` succeeded: forget its 131056 strikes."""
        self._strikes.pop(patient, None)

    def _prune(self, now: datetime) -> None:
        # Keep memory bounded: drop patients whose hold has passed and who have no strikes.
        if len(self._not_before) < 10_000:
            return
        for key in [k for k, t in self._not_before.items() if t <= now]:
            if key not in self._strikes:
                del self._not_before[key]


class TierCap:
    """Unique patients per rolling 24 h (Meta's messaging tier), holding sends past the cap.

    Args:
        clock: where "now" comes from.
        limit: unique patients per 24 h (250, 2,000, 10,000, 100,000), or None for unlimited.
        window: the rolling window (24 h).

    State is in memory; after a restart call :meth:`seed` with the recent sends from the store,
    or the cap starts empty (it can then over-send up to one tier's worth once).
    """

    def __init__(
        self, clock: Clock, limit: int | None, *, window: timedelta = timedelta(hours=24)
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError("tier limit must be >= 1 or None")
        self._clock = clock
        self.limit = limit
        self._window = window
        self._last: OrderedDict[str, datetime] = OrderedDict()  # oldest first

    def _expire(self, now: datetime) -> None:
        while self._last:
            patient, when = next(iter(self._last.items()))
            if when + self._window > now:
                break
            self._last.pop(patient)

    def count(self) -> int:
        """Unique patients messaged in the current window."""
        self._expire(self._clock.now())
        return len(self._last)

    def check(self, patient: str) -> datetime | None:
        """None when a message to ``patient`` fits the tier, else when a place frees up."""
        if self.limit is None:
            return None
        now = self._clock.now()
        self._expire(now)
        if patient in self._last or len(self._last) < self.limit:
            return None
        oldest = next(iter(self._last.values()))
        return oldest + self._window

    def record(self, patient: str) -> None:
        """A business-initiated message to ``patient`` is going out now."""
        if self.limit is None:
            return
        self._last[patient] = self._clock.now()
        self._last.move_to_end(patient)

    def seed(self, sends: Iterable[tuple[str, datetime]]) -> None:
        """Load recent ``(patient, sent_at)`` pairs (e.g. from the outbox) after a restart."""
        for patient, when in sorted(sends, key=lambda pair: pair[1]):
            self._last[patient] = when
            self._last.move_to_end(patient)
        self._expire(self._clock.now())


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowDecision:
    """May this kind of message go to this patient now?

    Attributes:
        allowed: True when it may be sent.
        reason: why not (``window_closed``, ``never_wrote``), None when allowed.
        closes_at: when the open window closes (None when closed or unknown).
    """

    allowed: bool
    reason: str | None = None
    closes_at: datetime | None = None


class CustomerWindow:
    """The 24-hour customer-service window: the pure decision, the store keeps the times.

    Args:
        length: window length (24 h).
        margin: safety margin before the end: clocks differ, and Meta's 131047 is worse than
            sending a template a few minutes early.
    """

    #: Kinds that need an open window; templates never do.
    SESSION_KINDS = frozenset({"text", "buttons", "list"})

    def __init__(
        self,
        *,
        length: timedelta = timedelta(hours=24),
        margin: timedelta = timedelta(minutes=5),
    ) -> None:
        self._length = length
        self._margin = margin

    def closes_at(self, last_inbound: datetime | None) -> datetime | None:
        """When the window opened by ``last_inbound`` closes (margin included)."""
        if last_inbound is None:
            return None
        return last_inbound + self._length - self._margin

    def decide(self, kind: str, last_inbound: datetime | None, now: datetime) -> WindowDecision:
        """Decide for a message of ``kind`` given the patient's last inbound message time.

        Args:
            kind: ``template``, ``text``, ``buttons`` or ``list``.
            last_inbound: when the patient last wrote or tapped (None: never).
            now: the current time.
        """
        closes = self.closes_at(last_inbound)
        is_open = closes is not None and last_inbound is not None and last_inbound <= now < closes
        if kind not in self.SESSION_KINDS:
            return WindowDecision(allowed=True, closes_at=closes if is_open else None)
        if is_open:
            return WindowDecision(allowed=True, closes_at=closes)
        reason = "never_wrote" if last_inbound is None else "window_closed"
        return WindowDecision(allowed=False, reason=reason)


class SendLimits:
    """All limits of one phone-number id, in the order a send meets them.

    ``admit`` checks the holds (patient back-off and spacing, tier) and raises
    :class:`SendHeld` for the first that applies, then waits for a rate slot. The spacing and
    tier are recorded at admission, so two concurrent sends to one patient cannot both pass.

    Args:
        clock: where "now" comes from.
        rate_per_second: see :class:`RateLimiter`.
        patient_spacing: see :class:`PatientSpacing` (seconds).
        tier_limit: see :class:`TierCap` (None: unlimited).
        sleep: injected into the rate limiter.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        rate_per_second: float = 80.0,
        patient_spacing: float = 6.0,
        tier_limit: int | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.clock = clock
        # 0 means no local rate limit (the loopback sandbox in benchmarks); the channel's
        # config refuses 0 for Meta itself
        self.rate: RateLimiter | None = (
            RateLimiter(clock, rate_per_second, sleep=sleep) if rate_per_second > 0 else None
        )
        self.spacing = PatientSpacing(clock, patient_spacing)
        self.tier = TierCap(clock, tier_limit)

    async def admit(self, patient: str, *, business_initiated: bool) -> None:
        """Wait for a slot to send to ``patient``, or refuse with :class:`SendHeld`.

        Args:
            patient: the recipient key (E.164).
            business_initiated: True for templates (they count against the tier).

        Raises:
            SendHeld: the patient's spacing/back-off or the tier holds this send.
        """
        now = self.clock.now()
        until = self.spacing.check(patient)
        if until is not None:
            raise SendHeld("patient_spacing", until, now)
        if business_initiated:
            until = self.tier.check(patient)
            if until is not None:
                raise SendHeld("tier", until, now)
            self.tier.record(patient)
        self.spacing.record_send(patient)
        if self.rate is not None:
            await self.rate.acquire()

    def on_throughput_error(self, seconds: float) -> None:
        """130429: pause every send of this number for ``seconds``."""
        if self.rate is not None:
            self.rate.pause(seconds)

    def on_pair_limit(self, patient: str) -> datetime:
        """131056: back off this patient only; returns until when."""
        return self.spacing.pair_limited(patient)

    def on_success(self, patient: str) -> None:
        """A send went through: reset the patient's 131056 strikes."""
        self.spacing.delivered(patient)
