"""Delivery status of one outbound message: a forward-only state machine.

Meta sends status webhooks at least once, out of order and duplicated (reference
whatsapp.md §3.6, §7: sent after delivered, delivered twice, read without delivered). The
engine folds every status it receives with :func:`advance`; because ``advance`` is the
maximum in a total order, any order and any duplication of the same updates ends in the
same state.

Order: ``accepted < sent < delivered < read < failed``. ``failed`` is final: a late ``sent``
never resurrects a failed message (chatwoot PR #14149). ``read`` implies ``delivered``: Meta
skips ``delivered`` when both happen at once (:func:`reached`).
"""

from __future__ import annotations

__all__ = ["DELIVERY_STATUSES", "advance", "is_final", "reached"]

#: Every status the bridge tracks, in order; ``failed`` ranks last because it is final.
DELIVERY_STATUSES: tuple[str, ...] = ("accepted", "sent", "delivered", "read", "failed")

_RANK = {status: rank for rank, status in enumerate(DELIVERY_STATUSES)}


def _rank(status: str) -> int:
    try:
        return _RANK[status]
    except KeyError:
        raise ValueError(f"unknown delivery status {status!r}") from None


def advance(current: str | None, new: str) -> str:
    """Fold one status update into the current state; never moves backwards.

    Args:
        current: the state so far, or None when nothing is known yet.
        new: the status just received.

    Returns:
        The new state: ``new`` when it ranks higher than ``current``, else ``current``.

    Raises:
        ValueError: ``new`` or ``current`` is not one of :data:`DELIVERY_STATUSES` (the webhook
            parser drops unknown status strings before they get here).
    """
    new_rank = _rank(new)
    if current is None:
        return new
    return new if new_rank > _rank(current) else current


def is_final(status: str) -> bool:
    """True when no later status can change the outcome (``failed``)."""
    return status == "failed"


def reached(state: str | None, milestone: str) -> bool:
    """True when a message in ``state`` has got at least as far as ``milestone``.

    ``failed`` reaches nothing past ``accepted``: a failed message was not delivered even
    though it ranks last.

    Args:
        state: the folded state (or None).
        milestone: ``sent``, ``delivered`` or ``read``.

    Raises:
        ValueError: unknown status.
    """
    target = _rank(milestone)
    if state is None:
        return False
    if state == "failed":
        return milestone in ("accepted", "failed")
    return _rank(state) >= target
