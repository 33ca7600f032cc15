"""Delivery status folding: forward only, order- and duplicate-insensitive."""

from __future__ import annotations

from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.domain.delivery import DELIVERY_STATUSES, advance, is_final, reached

WEBHOOK_STATUSES = ("sent", "delivered", "read", "failed")


def fold(updates: list[str], start: str | None = "accepted") -> str | None:
    return reduce(advance, updates, start)


class TestAdvance:
    @pytest.mark.parametrize(
        ("current", "new", "expected"),
        [
            (None, "sent", "sent"),
            ("accepted", "sent", "sent"),
            ("sent", "delivered", "delivered"),
            ("delivered", "sent", "delivered"),
            ("read", "delivered", "read"),
            ("sent", "read", "read"),
            ("read", "failed", "failed"),
            ("failed", "sent", "failed"),
            ("failed", "read", "failed"),
            ("failed", "failed", "failed"),
        ],
    )
    def test_status_only_moves_forward(self, current, new, expected):
        assert advance(current, new) == expected

    def test_unknown_status_is_refused(self):
        with pytest.raises(ValueError, match="unknown delivery status"):
            advance("sent", "deleted")

    def test_read_implies_delivered_even_when_delivered_never_came(self):
        state = fold(["read"])
        assert reached(state, "delivered")
        assert reached(state, "sent")

    def test_failed_is_final_and_reaches_nothing_delivered(self):
        assert is_final("failed")
        assert not is_final("read")
        assert not reached("failed", "delivered")
        assert not reached(None, "sent")

    @given(
        st.lists(st.sampled_from(WEBHOOK_STATUSES), min_size=1, max_size=8),
        st.randoms(use_true_random=False),
        st.lists(st.integers(min_value=0, max_value=20), max_size=10),
    )
    def test_any_order_and_duplication_ends_in_the_same_state(self, updates, rnd, dup_picks):
        """Meta reorders and repeats status webhooks; the folded state must not care."""
        # Given a message's status updates, shuffled and with some of them repeated
        noisy = list(updates) + [updates[i % len(updates)] for i in dup_picks]
        rnd.shuffle(noisy)

        # When both are folded from the send response's "accepted"
        # Then they end in the same state, the highest one seen
        assert fold(noisy) == fold(updates)
        assert fold(noisy) == max(updates, key=DELIVERY_STATUSES.index)

    @given(st.lists(st.sampled_from(DELIVERY_STATUSES), max_size=8))
    def test_state_never_moves_backwards(self, updates):
        state: str | None = None
        for update in updates:
            nxt = advance(state, update)
            if state is not None:
                assert DELIVERY_STATUSES.index(nxt) >= DELIVERY_STATUSES.index(state)
            state = nxt
