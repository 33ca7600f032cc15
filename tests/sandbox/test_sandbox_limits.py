"""Throughput (130429) and pair rate (131056), measured over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from bridge.sandbox import SANDBOX_TOKEN, SandboxConfig, SandboxServer
from bridge.sandbox._limits import PairLimiter, ThroughputLimiter

PHONE_ID = SandboxConfig().phone_number_id


def _text(to: str) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "template": {
            "name": "appointment_confirmed",
            "language": {"code": "es"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "12 de marzo"},
                        {"type": "text", "text": "10:30"},
                    ],
                }
            ],
        },
    }


async def _served(**overrides: Any) -> SandboxServer:
    return SandboxServer(SandboxConfig(port=0, seed=3, **overrides))


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {SANDBOX_TOKEN}"}, timeout=10.0
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestThroughput:
    async def test_burst_over_the_rate_gets_130429_with_http_400(self):
        async with await _served(rate_per_second=20) as server, _client(server.url) as client:
            # Given 60 sends fired at once to distinct patients
            responses = await asyncio.gather(
                *(
                    client.post(f"/v21.0/{PHONE_ID}/messages", json=_text(f"+5730012310{i:02d}"))
                    for i in range(60)
                )
            )
            stats = (await client.get("/_sandbox/stats")).json()

        # Then at most 20 go through in the window, the rest are refused like Meta
        accepted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        assert 1 <= len(accepted) <= 20
        assert len(accepted) + len(refused) == 60
        assert {r.status_code for r in refused} == {400}
        assert {r.json()["error"]["code"] for r in refused} == {130429}
        assert stats["max_rate_per_second"] <= 20
        assert stats["errors"]["130429"] == len(refused)

    async def test_http_429_can_be_scripted_for_throughput_errors(self):
        async with (
            await _served(rate_per_second=2, throughput_http_status=429) as server,
            _client(server.url) as client,
        ):
            statuses = [
                (await client.post(f"/v21.0/{PHONE_ID}/messages", json=_text(f"+57300123110{i}")))
                for i in range(4)
            ]

        assert [r.status_code for r in statuses] == [200, 200, 429, 429]
        assert statuses[-1].json()["error"]["code"] == 130429

    async def test_no_one_second_window_holds_more_than_the_rate(self):
        rate = 25
        async with await _served(rate_per_second=rate) as server, _client(server.url) as client:
            # When a greedy sender pushes for 2.2 s (bounded loop)
            deadline = time.monotonic() + 2.2
            sent = 0
            while time.monotonic() < deadline and sent < 5000:
                batch = [
                    client.post(
                        f"/v21.0/{PHONE_ID}/messages", json=_text(f"+57300123{sent + i:04d}")
                    )
                    for i in range(10)
                ]
                await asyncio.gather(*batch)
                sent += 10
            log = (await client.get("/_sandbox/messages")).json()["data"]

        # Then the accepted messages, seen through any one-second window, never exceed the rate
        stamps = sorted(m["timestamp"] for m in log)
        assert len(stamps) >= 2 * rate
        for i, start in enumerate(stamps):
            in_window = sum(1 for t in stamps[i:] if t - start < 0.999)
            assert in_window <= rate
        assert len(stamps) <= rate * 4


class TestPairRate:
    async def test_burst_to_one_patient_gets_131056_and_others_are_unaffected(self):
        async with (
            await _served(pair_burst=3, pair_interval_seconds=1.0) as server,
            _client(server.url) as client,
        ):
            url = f"/v21.0/{PHONE_ID}/messages"
            to_one = [await client.post(url, json=_text("+573001231200")) for _ in range(4)]
            to_other = await client.post(url, json=_text("+573001231201"))
            await asyncio.sleep(1.05)
            after_pause = [await client.post(url, json=_text("+573001231200")) for _ in range(2)]

        assert [r.status_code for r in to_one] == [200, 200, 200, 400]
        assert to_one[-1].json()["error"]["code"] == 131056
        assert to_other.status_code == 200
        # One interval earns exactly one message back: the burst borrowed from future quota.
        assert [r.status_code for r in after_pause] == [200, 400]


class TestLimiters:
    def test_sliding_window_frees_a_slot_exactly_one_second_later(self):
        clock = FakeClock()
        limiter = ThroughputLimiter(3, clock)

        first = [limiter.try_acquire() for _ in range(4)]
        clock.now += 0.999
        still_full = limiter.try_acquire()
        clock.now += 0.001
        freed = limiter.try_acquire()

        assert first == [True, True, True, False]
        assert still_full is False
        assert freed is True
        assert limiter.max_in_window == 3

    @pytest.mark.parametrize(("burst", "interval"), [(1, 6.0), (45, 6.0), (3, 0.5)])
    def test_token_bucket_allows_burst_then_one_per_interval(self, burst, interval):
        clock = FakeClock()
        limiter = PairLimiter(burst, interval, clock)

        burst_ok = [limiter.try_acquire("57300") for _ in range(burst)]
        over = limiter.try_acquire("57300")
        clock.now += interval
        refilled = [limiter.try_acquire("57300") for _ in range(2)]

        assert all(burst_ok)
        assert over is False
        assert refilled == [True, False]
        assert limiter.try_acquire("57301") is True
