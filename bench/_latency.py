"""Latency summaries shared by the load generators: percentiles in milliseconds."""

from __future__ import annotations

__all__ = ["percentile_ms", "summarise"]

from collections.abc import Sequence
from typing import Any


def percentile_ms(sorted_ns: Sequence[int], fraction: float) -> float | None:
    """The nearest-rank percentile of sorted nanosecond samples, in milliseconds.

    Args:
        sorted_ns: latencies in nanoseconds, ascending.
        fraction: 0.5 for p50, 0.99 for p99.

    Returns:
        milliseconds rounded to 3 decimals, or None without samples.
    """
    if not sorted_ns:
        return None
    rank = min(len(sorted_ns) - 1, max(0, round(fraction * len(sorted_ns)) - 1))
    return round(sorted_ns[rank] / 1e6, 3)


def summarise(latencies_ns: list[int], elapsed_s: float) -> dict[str, Any]:
    """Count, rate and p50/p99/max of one load run.

    Args:
        latencies_ns: one sample per answered request.
        elapsed_s: wall time from the first send to the last answer.
    """
    latencies_ns.sort()
    count = len(latencies_ns)
    return {
        "answered": count,
        "elapsed_s": round(elapsed_s, 3),
        "rate_per_s": round(count / elapsed_s, 1) if elapsed_s > 0 else None,
        "p50_ms": percentile_ms(latencies_ns, 0.50),
        "p99_ms": percentile_ms(latencies_ns, 0.99),
        "max_ms": round(latencies_ns[-1] / 1e6, 3) if latencies_ns else None,
    }
