"""Sending limits: rate, patient spacing, tier cap and the 24-hour window."""

from __future__ import annotations

import asyncio
import bisect
import time
from datetime import UTC, datetime, timedelta

import pytest

from bridge.ports import SystemClock
from bridge.testing import FixedClock
from bridge.whatsapp._limits import (
    CustomerWindow,
    PatientSpacing,
    RateLimiter,
    SendHeld,
    SendLimits,
    TierCap,
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ANA, BEA = "+573001230001", "+573001230002"


class FakeSleep:
    """An ``asyncio.sleep`` stand-in that moves the fake clock instead of waiting."""

    def __init__(self, clock: FixedClock) -> None:
        self.clock = clock
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.clock.advance(timedelta(seconds=seconds))


def max_in_window(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    return max(bisect.bisect_left(stamps, s + window) - i for i, s in enumerate(stamps))


class TestRateLimiter:
    def test_tokens_come_at_one_over_rate(self):
        clock = FixedClock(T0)
        limiter = RateLimiter(clock, rate=4)
        assert limiter.try_take() == 0.0
        assert limiter.try_take() == pytest.approx(0.25)
        clock.advance(timedelta(seconds=0.25))
        assert limiter.try_take() == 0.0

    def test_idle_time_is_not_hoarded_beyond_capacity(self):
        clock = FixedClock(T0)
        limiter = RateLimiter(clock, rate=10, capacity=3)
        clock.advance(timedelta(seconds=60))
        waits = [limiter.try_take() for _ in range(4)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert waits[3] == pytest.approx(0.1, abs=1e-5)

    def test_pause_holds_every_send_and_leaves_no_burst(self):
        clock = FixedClock(T0)
        limiter = RateLimiter(clock, rate=100, capacity=5)
        clock.advance(timedelta(seconds=1))
        limiter.pause(2.0)
        assert limiter.try_take() == pytest.approx(2.0)
        clock.advance(timedelta(seconds=2))
        assert limiter.try_take() == pytest.approx(0.01, abs=1e-5)

    async def test_acquire_sleeps_until_a_token_is_there(self):
        clock = FixedClock(T0)
        sleep = FakeSleep(clock)
        limiter = RateLimiter(clock, rate=2, sleep=sleep)
        for _ in range(3):
            await limiter.acquire()
        assert sleep.calls == [pytest.approx(0.5), pytest.approx(0.5)]

    @pytest.mark.parametrize("rate", [0, -1, 1001])
    def test_rate_out_of_range_is_refused(self, rate):
        with pytest.raises(ValueError, match="rate"):
            RateLimiter(FixedClock(T0), rate)

    @pytest.mark.parametrize("rate", [80, 1000])
    async def test_measured_rate_never_exceeds_the_configured_rate(self, rate):
        """Over any 2-second window of a 2.3-second run, sends stay within 5 % of the rate."""
        limiter = RateLimiter(SystemClock(), rate)
        stamps: list[float] = []
        total = int(rate * 2.3)

        async def send() -> None:
            await limiter.acquire()
            stamps.append(time.monotonic())

        async with asyncio.timeout(15):
            await asyncio.gather(*(send() for _ in range(total)))

        assert len(stamps) == total
        assert stamps[-1] - stamps[0] >= 2.0
        assert max_in_window(stamps, 2.0) <= rate * 2.0 * 1.05
        # and the limiter does not throttle far below its rate either
        assert (len(stamps) - 1) / (stamps[-1] - stamps[0]) >= rate * 0.95


class TestPatientSpacing:
    def test_second_message_waits_six_seconds(self):
        clock = FixedClock(T0)
        spacing = PatientSpacing(clock)
        spacing.record_send(ANA)
        assert spacing.check(ANA) == T0 + timedelta(seconds=6)
        assert spacing.check(BEA) is None
        clock.advance(timedelta(seconds=6))
        assert spacing.check(ANA) is None

    def test_pair_limit_backs_off_four_to_the_x_for_that_patient_only(self):
        clock = FixedClock(T0)
        spacing = PatientSpacing(clock, spacing=0)
        assert spacing.pair_limited(ANA) == T0 + timedelta(seconds=1)
        assert spacing.pair_limited(ANA) == T0 + timedelta(seconds=4)
        assert spacing.pair_limited(ANA) == T0 + timedelta(seconds=16)
        assert spacing.check(BEA) is None
        spacing.delivered(ANA)
        clock.advance(timedelta(seconds=20))
        assert spacing.pair_limited(ANA) == clock.now() + timedelta(seconds=1)

    def test_backoff_is_capped(self):
        spacing = PatientSpacing(FixedClock(T0), max_backoff_exponent=2)
        holds = [spacing.pair_limited(ANA) for _ in range(5)]
        assert holds[-1] == T0 + timedelta(seconds=16)


class TestTierCap:
    def test_cap_holds_new_patients_until_the_oldest_ages_out(self):
        clock = FixedClock(T0)
        tier = TierCap(clock, limit=2)
        tier.record(ANA)
        clock.advance(timedelta(hours=1))
        tier.record(BEA)
        assert tier.check("+573001230003") == T0 + timedelta(hours=24)
        assert tier.check(ANA) is None  # already counted: no new unique patient
        clock.advance(timedelta(hours=23))
        assert tier.check("+573001230003") is None
        assert tier.count() == 1

    def test_unlimited_tier_never_holds(self):
        tier = TierCap(FixedClock(T0), limit=None)
        for i in range(1000):
            tier.record(f"+5730012{i:05d}")
        assert tier.check("+573009999999") is None

    def test_seed_restores_recent_sends(self):
        clock = FixedClock(T0)
        tier = TierCap(clock, limit=1)
        tier.seed([(ANA, T0 - timedelta(hours=25)), (BEA, T0 - timedelta(hours=2))])
        assert tier.count() == 1
        assert tier.check(ANA) == T0 + timedelta(hours=22)


class TestCustomerWindow:
    @pytest.mark.parametrize(
        ("kind", "last", "allowed", "reason"),
        [
            ("template", None, True, None),
            ("text", None, False, "never_wrote"),
            ("buttons", T0 - timedelta(hours=2), True, None),
            ("list", T0 - timedelta(hours=23, minutes=56), False, "window_closed"),
            ("list", T0 - timedelta(hours=23, minutes=54), True, None),
            ("text", T0 - timedelta(hours=30), False, "window_closed"),
            ("template", T0 - timedelta(hours=30), True, None),
        ],
        ids=[
            "template never",
            "text never",
            "buttons inside",
            "list in margin",
            "list before margin",
            "text expired",
            "template expired",
        ],
    )
    def test_session_messages_need_an_open_window(self, kind, last, allowed, reason):
        decision = CustomerWindow().decide(kind, last, T0)
        assert (decision.allowed, decision.reason) == (allowed, reason)

    def test_closes_at_includes_the_margin(self):
        window = CustomerWindow(margin=timedelta(minutes=10))
        assert window.closes_at(T0) == T0 + timedelta(hours=23, minutes=50)
        assert window.decide("text", T0, T0).closes_at == T0 + timedelta(hours=23, minutes=50)


class TestSendLimits:
    async def test_second_send_to_a_patient_is_held_not_sent(self):
        clock = FixedClock(T0)
        limits = SendLimits(clock, sleep=FakeSleep(clock))
        await limits.admit(ANA, business_initiated=True)
        with pytest.raises(SendHeld) as info:
            await limits.admit(ANA, business_initiated=False)
        assert info.value.limit == "patient_spacing"
        assert info.value.retry_after == 6.0
        assert info.value.retryable
        await limits.admit(BEA, business_initiated=False)

    async def test_tier_holds_business_initiated_sends_only(self):
        clock = FixedClock(T0)
        limits = SendLimits(clock, tier_limit=1, patient_spacing=0, sleep=FakeSleep(clock))
        await limits.admit(ANA, business_initiated=True)
        with pytest.raises(SendHeld) as info:
            await limits.admit(BEA, business_initiated=True)
        assert info.value.limit == "tier"
        assert info.value.hold_until == T0 + timedelta(hours=24)
        await limits.admit(BEA, business_initiated=False)  # a reply inside the window

    async def test_throughput_error_pauses_everyone(self):
        clock = FixedClock(T0)
        sleep = FakeSleep(clock)
        limits = SendLimits(clock, rate_per_second=1000, sleep=sleep)
        limits.on_throughput_error(3.0)
        await limits.admit(ANA, business_initiated=False)
        assert sum(sleep.calls) == pytest.approx(3.001, abs=1e-4)
