"""Fuzz (issue 7): thousands of broken HL7 frames and webhook bodies, and the daemon stays up.

One real ``bridge run`` (SQLite, embedded sandbox) gets mutated HL7 v2 messages over MLLP
(truncation, bit flips, shuffled, dropped or repeated segments, huge fields, bad encodings,
random bytes, and some broken framing) and mutated WhatsApp webhook bodies, signed with the
sandbox app secret, over HTTP. Every frame must be answered (an ACK of some code, or a clean
close once we stop sending), every body must get a status below 500, and afterwards the daemon
must still take a valid booking and send its reminder.

The RNG seed is printed; ``FAULTS_SEED=<n>`` repeats a run. CI: 2,000 of each; ``slow``: 10,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import CORPUS
from tests.e2e.daemon import free_port
from tests.faults._harness import (
    FakeHis,
    ack_code,
    bridge_config,
    daemon_running,
    make_daemon,
    phone,
    run_seed,
    siu,
)
from tests.faults._mutate import hl7_corpus, mutate_hl7, mutate_webhook, whatsapp_corpus

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
APP_SECRET = b"sandbox-app-secret"  # the loopback default (bridge/whatsapp/_channel.py)
WORKERS = 8
ANSWERS = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})


@dataclass(frozen=True)
class Campaign:
    """How much fuzz, and how long it may take."""

    name: str
    frames: int
    bodies: int
    time_limit: float


def _frame(rng: random.Random, payload: bytes) -> tuple[str, bytes]:
    """MLLP framing: right 9 times in 10, else broken in one of three ways."""
    roll = rng.random()
    if roll < 0.9:
        return "framed", VT + payload + FS + CR
    if roll < 0.94:
        return "no_start", payload + FS + CR
    if roll < 0.97:
        return "no_end", VT + payload
    return "two_in_one", VT + payload + FS + CR + VT + payload[: len(payload) // 2] + FS + CR


async def _mllp_exchange(port: int, frame: bytes, *, half_close: bool = False) -> str:
    """Send one frame on a fresh connection; how did the daemon answer?

    A frame that cannot be complete (``half_close``), or that got no answer within 10 s, is
    followed by a half-close: the daemon must then answer or close cleanly. The daemon drops a
    connection on EOF without writing the answers still due, so a complete frame is never
    half-closed first.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=8 << 20)
    try:
        writer.write(frame)
        await writer.drain()
        for wait in (10.0, 10.0):
            if half_close and writer.can_write_eof():
                with contextlib.suppress(OSError):  # the daemon may have hung up already
                    writer.write_eof()
            try:
                reply = await asyncio.wait_for(reader.readuntil(FS + CR), wait)
            except asyncio.IncompleteReadError as exc:
                if exc.partial:
                    return "partial"
                return "closed_after_eof" if half_close else "closed"
            except asyncio.LimitOverrunError:
                return "oversized_answer"
            except TimeoutError:
                if half_close:
                    return "timeout"
                half_close = True
                continue
            text = reply.strip(VT + FS + CR).decode("utf-8", "replace")
            return ack_code(text) or f"not_an_ack:{text[:300]!r}"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    else:
        return "timeout"
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


def _is_ack(frame: bytes) -> bool:
    """Whether an MSH segment names an ACK (the daemon reads MSH-9 leniently: any case, a BOM
    or stray bytes before ``MSH``)."""
    return any(b"MSH" in seg[:8].upper() and b"ACK" in seg.upper() for seg in frame.split(CR))


def _signed(body: bytes, *, good: bool) -> dict[str, str]:
    key = APP_SECRET if good else b"not-the-secret"
    digest = hmac.new(key, body, hashlib.sha256).hexdigest()
    return {"content-type": "application/json", "x-hub-signature-256": f"sha256={digest}"}


async def _pool(jobs: list[Callable[[], Awaitable[None]]]) -> None:
    queue = list(reversed(jobs))

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(WORKERS)))


CAMPAIGNS = [
    Campaign("ci", frames=2_000, bodies=2_000, time_limit=150),
    pytest.param(
        Campaign("soak", frames=10_000, bodies=10_000, time_limit=900),
        marks=pytest.mark.slow,
        id="soak",
    ),
]


class TestFuzzOverRealSockets:
    @pytest.mark.parametrize("campaign", CAMPAIGNS, ids=lambda c: getattr(c, "name", str(c)))
    async def test_every_broken_frame_and_body_is_answered_and_the_daemon_still_serves(
        self, tmp_path: Path, campaign: Campaign
    ) -> None:
        seed = run_seed("fuzz")
        rng = random.Random(seed)
        mllp_port, sandbox_port = free_port(), free_port()
        frames = [mutate_hl7(rng, hl7_corpus()) for _ in range(campaign.frames)]
        framed = [(name, *_frame(rng, payload)) for name, payload in frames]
        bodies = [
            (*mutate_webhook(rng, whatsapp_corpus()), rng.random() < 0.95)
            for _ in range(campaign.bodies)
        ]
        mllp_outcomes: Counter[str] = Counter()
        http_outcomes: Counter[int] = Counter()
        failures: list[str] = []
        with FakeHis() as his:
            config = bridge_config(
                mllp_port=mllp_port,
                his_port=his.port,
                whatsapp_url=f"http://127.0.0.1:{sandbox_port}",
                sandbox_enabled=True,
                sandbox_port=sandbox_port,
            )
            daemon = make_daemon(tmp_path, config)
            with daemon_running(daemon):
                await asyncio.to_thread(daemon.wait_ready)
                started = time.monotonic()

                def mllp_job(
                    index: int, mutation: str, framing: str, frame: bytes
                ) -> Callable[[], Awaitable[None]]:
                    async def job() -> None:
                        # an ACK is not acknowledged (hl7v2.md): nothing will come back for one
                        is_ack = _is_ack(frame)
                        outcome = await _mllp_exchange(
                            mllp_port, frame, half_close=framing == "no_end" or is_ack
                        )
                        mllp_outcomes[outcome] += 1
                        # a whole frame with no stray framing bytes inside must get an ACK
                        whole = framing == "framed" and not (
                            is_ack or VT in frame[1:-2] or FS in frame[1:-2]
                        )
                        clean = outcome in ANSWERS or outcome.startswith("closed")
                        # bytes outside a frame: the daemon hangs up, maybe while we still send
                        clean = clean or (not whole and outcome == "reset")
                        if not clean or (whole and outcome.startswith("closed")):
                            failures.append(f"frame {index} ({mutation}, {framing}): {outcome}")

                    return job

                # Given thousands of mutated HL7 messages sent over MLLP, eight at a time
                async with asyncio.timeout(campaign.time_limit):
                    await _pool([mllp_job(i, *f) for i, f in enumerate(framed)])
                    mllp_seconds = time.monotonic() - started
                    # and thousands of mutated webhook bodies, signed (95 %) or not
                    async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as client:

                        def http_job(
                            index: int, kind: str, body: bytes, good: bool
                        ) -> Callable[[], Awaitable[None]]:
                            async def job() -> None:
                                resp = await client.post(
                                    "/webhooks/whatsapp",
                                    content=body,
                                    headers=_signed(body, good=good),
                                )
                                http_outcomes[resp.status_code] += 1
                                if resp.status_code >= 500:
                                    failures.append(f"body {index} ({kind}): {resp.status_code}")

                            return job

                        await _pool([http_job(i, *b) for i, b in enumerate(bodies)])
                elapsed = time.monotonic() - started
                alive = daemon.alive()
                # When a valid booking and a valid webhook come after all that
                start = datetime.now(UTC) + timedelta(hours=40)
                after = await _mllp_exchange(mllp_port, siu("Z00001", "Z00001", start, phone(1)))
                valid = (CORPUS / "whatsapp" / "webhook_status_sent__pywa.json").read_bytes()
                valid = json.dumps(json.loads(valid)).encode()
                async with httpx.AsyncClient(base_url=daemon.url, timeout=30) as client:
                    webhook = await client.post(
                        "/webhooks/whatsapp", content=valid, headers=_signed(valid, good=True)
                    )
                    ready = (await client.get("/readyz")).status_code

                    async def reminder_sent() -> bool:
                        sent = (
                            await client.get(
                                f"http://127.0.0.1:{sandbox_port}/_sandbox/messages",
                                params={"to": phone(1)},
                            )
                        ).json()["data"]
                        return bool(sent)

                    deadline = time.monotonic() + 30
                    while not await reminder_sent():
                        assert time.monotonic() < deadline, "no reminder after the fuzz"
                        await asyncio.sleep(0.2)
        print(
            f"{campaign.frames} frames in {mllp_seconds:.1f} s: {dict(mllp_outcomes)}; "
            f"{campaign.bodies} bodies in {elapsed - mllp_seconds:.1f} s: "
            f"{dict(http_outcomes)}"
        )
        # Then nothing crashed, and every frame and body got an answer
        assert alive
        assert not failures, f"{len(failures)} unanswered or failed: {failures[:20]}"
        assert sum(mllp_outcomes.values()) == campaign.frames
        assert sum(http_outcomes.values()) == campaign.bodies
        # and the daemon still serves: AA, 200, ready, and the reminder went out
        assert after == "AA"
        assert webhook.status_code == 200
        assert ready == 200


class TestSenderThatHalfCloses:
    async def test_a_frame_followed_by_a_half_close_still_gets_its_ack(
        self, tmp_path: Path
    ) -> None:
        mllp_port, sandbox_port = free_port(), free_port()
        with FakeHis() as his:
            config = bridge_config(
                mllp_port=mllp_port,
                his_port=his.port,
                whatsapp_url=f"http://127.0.0.1:{sandbox_port}",
                sandbox_enabled=True,
                sandbox_port=sandbox_port,
            )
            daemon = make_daemon(tmp_path, config)
            with daemon_running(daemon):
                await asyncio.to_thread(daemon.wait_ready)
                # Given a sender that says it has nothing more to send right after its frame
                start = datetime.now(UTC) + timedelta(hours=40)
                frame = siu("EOF00001", "EOF00001", start, phone(1))
                # When it sends one booking that way
                outcome = await _mllp_exchange(mllp_port, frame, half_close=True)
        # Then it is told the booking was stored
        assert outcome == "AA"
