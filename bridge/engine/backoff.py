"""Capped exponential backoff with jitter for durable retries. ⟵ dramatiq ``compute_backoff``.

"Equal jitter": the delay for attempt *n* is half the capped exponential plus a random share of
the other half. The floor (``cap / 2``) never decreases with *n* and never exceeds ``maximum``,
which is what the property tests check; the jitter spreads a burst of failures so that a
recovering Graph API is not hit by all retries in the same second.
"""

from __future__ import annotations

__all__ = ["backoff_ceiling", "compute_backoff"]

import random


def backoff_ceiling(attempt: int, base: float, maximum: float) -> float:
    """``min(maximum, base * 2 ** (attempt - 1))`` for attempt ≥ 1."""
    exponent = max(0, attempt - 1)
    if exponent > 62:  # 2**63 overflows nothing in Python, but there is no point computing it
        return maximum
    return float(min(maximum, base * (2**exponent)))


def compute_backoff(
    attempt: int, *, base: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before attempt ``attempt + 1``.

    Args:
        attempt: attempts made so far (1 after the first failure).
        base: delay after the first failure, before jitter.
        maximum: cap on the delay.
        rng: a seeded generator for tests.
    """
    ceiling = backoff_ceiling(attempt, base, maximum)
    share = (rng or random).random()
    return ceiling / 2 + share * ceiling / 2
