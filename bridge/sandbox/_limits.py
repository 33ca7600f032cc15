"""Meta's sending limits as the sandbox enforces them (reference whatsapp.md §4.1).

- Throughput: at most ``rate`` messages in any sliding 1-second window per phone-number id;
  beyond it Meta answers 130429. The sandbox also records the highest count seen in a window,
  so tests can check the bridge's own limiter.
- Pair rate: one business number to one patient, 1 message per 6 s with a burst allowance that
  "borrows from future quota". A token bucket models that exactly: ``burst`` tokens, one token
  back every ``interval`` seconds; an empty bucket answers 131056.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["PairLimiter", "ThroughputLimiter"]

Clock = Callable[[], float]

#: Idle recipients are forgotten once the map holds this many entries (keeps memory bounded).
#: The threshold then doubles with the live entries, so pruning stays amortised O(1) per send.
_PAIR_PRUNE_AT = 50_000


class ThroughputLimiter:
    """Sliding one-second window of accepted messages for one phone number.

    Args:
        rate: Messages allowed in any one-second window.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(self, rate: float, clock: Clock = time.monotonic) -> None:
        self._limit = max(1, int(rate))
        self._clock = clock
        self._stamps: deque[float] = deque()
        self.max_in_window = 0

    def try_acquire(self) -> bool:
        """Count one message if the window has room.

        Returns:
            ``True`` if the message may go, ``False`` if it would exceed the rate.
        """
        now = self._clock()
        stamps = self._stamps
        while stamps and now - stamps[0] >= 1.0:
            stamps.popleft()
        if len(stamps) >= self._limit:
            return False
        stamps.append(now)
        self.max_in_window = max(self.max_in_window, len(stamps))
        return True


class PairLimiter:
    """Token bucket per recipient.

    Args:
        burst: Bucket size (messages one patient can get at once).
        interval: Seconds to earn back one message.
        clock: Monotonic seconds (injectable for tests).
    """

    def __init__(self, burst: int, interval: float, clock: Clock = time.monotonic) -> None:
        self._burst = float(burst)
        self._interval = interval
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._prune_at = _PAIR_PRUNE_AT

    def try_acquire(self, recipient: str) -> bool:
        """Take one token for ``recipient`` (digits).

        Returns:
            ``True`` if the message may go, ``False`` for 131056.
        """
        now = self._clock()
        tokens, stamp = self._buckets.get(recipient, (self._burst, now))
        tokens = min(self._burst, tokens + (now - stamp) / self._interval)
        if tokens < 1.0:
            self._buckets[recipient] = (tokens, now)
            return False
        self._buckets[recipient] = (tokens - 1.0, now)
        if len(self._buckets) > self._prune_at:
            self._prune(now)
        return True

    def _prune(self, now: float) -> None:
        full_after = self._burst * self._interval
        for key in [k for k, (_, t) in self._buckets.items() if now - t >= full_after]:
            del self._buckets[key]
        self._prune_at = max(_PAIR_PRUNE_AT, 2 * len(self._buckets))

    def __len__(self) -> int:
        return len(self._buckets)
