"""Signed webhook delivery from the sandbox to the bridge (reference whatsapp.md §3.2).

Every POST is shaped like Meta's::

    {"object": "whatsapp_business_account",
     "entry": [{"id": "<WABA id>",
                "changes": [{"value": {"messaging_product": "whatsapp",
                                       "metadata": {"display_phone_number": "...",
                                                    "phone_number_id": "..."},
                                       "statuses": [...]},           # and/or contacts + messages
                             "field": "messages"}]}]}

with ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>``. Like Meta, the body
escapes non-ASCII as ``\\uXXXX`` and ``/`` as ``\\/``, so a receiver that re-serialises before
checking the signature fails, as it would in production.

Updates wait in a time-ordered heap until due, then workers batch ready updates (up to
``batch_max`` per POST) and post them. A non-200 answer or a connection error is retried with the
same bytes: once at once, then with doubling delays, ``webhook_max_attempts`` in all. The heap is
bounded by ``max_pending_webhooks``; updates beyond it are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bridge.sandbox._config import SandboxConfig
from bridge.sandbox._stats import Stats

__all__ = ["Update", "WebhookDispatcher", "encode_like_meta", "sign"]

logger = logging.getLogger("bridge.sandbox.webhooks")

#: How many posted bodies ``GET /_sandbox/webhooks`` can show.
_KEEP_POSTED = 1000


def encode_like_meta(body: dict[str, Any]) -> bytes:
    """Serialise a webhook body the way Meta does (ASCII only, escaped slashes).

    Args:
        body: The webhook object.

    Returns:
        The exact bytes to sign and send.
    """
    text = json.dumps(body, ensure_ascii=True, separators=(",", ":"))
    return text.replace("/", "\\/").encode("ascii")


def sign(app_secret: str, raw: bytes) -> str:
    """Return the ``X-Hub-Signature-256`` header value for ``raw``.

    Args:
        app_secret: The app secret (HMAC key).
        raw: The exact body bytes.
    """
    digest = hmac.new(app_secret.encode("utf-8"), raw, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass(frozen=True, slots=True)
class Update:
    """One item for the bridge: a status or an inbound message.

    Args:
        kind: ``"statuses"`` or ``"messages"``.
        item: The ``statuses[]`` or ``messages[]`` object.
        contact: The ``contacts[]`` entry that goes with it, if any.
    """

    kind: str
    item: dict[str, Any]
    contact: dict[str, Any] | None = None


@dataclass(slots=True)
class _Post:
    raw: bytes
    updates: int
    attempt: int = 1


@dataclass(order=True, slots=True)
class _Due:
    due: float
    seq: int
    payload: Update | _Post = field(compare=False)


class WebhookDispatcher:
    """Queues updates and posts them, signed, to the bridge.

    Args:
        config: The sandbox configuration (URL, secret, batching, retries).
        stats: Counters to update.
    """

    def __init__(self, config: SandboxConfig, stats: Stats) -> None:
        self._config = config
        self._stats = stats
        self._heap: list[_Due] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._ready: asyncio.Queue[Update | _Post] = asyncio.Queue()
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        #: Raw bodies of the last POSTs answered 200 (parsed only when the control API asks).
        self.posted: deque[bytes] = deque(maxlen=_KEEP_POSTED)

    @property
    def pending(self) -> int:
        """Updates queued or in flight."""
        return self._pending

    @property
    def enabled(self) -> bool:
        """Whether a webhook URL is configured."""
        return self._config.webhook_url is not None

    def start(self) -> None:
        """Open the HTTP session and start the scheduler and the workers (idempotent).

        Must be called from a running event loop.
        """
        if self._tasks or not self.enabled:
            return
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._config.webhook_concurrency),
            timeout=aiohttp.ClientTimeout(total=self._config.webhook_timeout_seconds),
        )
        self._tasks.append(asyncio.create_task(self._schedule_loop(), name="sandbox-scheduler"))
        self._tasks.extend(
            asyncio.create_task(self._worker(), name=f"sandbox-webhook-{i}")
            for i in range(self._config.webhook_concurrency)
        )

    async def aclose(self) -> None:
        """Stop the tasks and close the session; queued updates are discarded."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def clear(self) -> None:
        """Forget every queued update (control-API reset); in-flight POSTs still finish."""
        dropped = len(self._heap)
        self._heap.clear()
        while not self._ready.empty():
            item = self._ready.get_nowait()
            dropped += 1 if isinstance(item, Update) else 0
        self._done(dropped)
        self.posted.clear()

    async def drain(self, within: float) -> bool:
        """Wait until nothing is queued or in flight.

        Args:
            within: Seconds to wait at most.

        Returns:
            ``True`` if drained in time.
        """
        try:
            await asyncio.wait_for(self._idle.wait(), within)
        except TimeoutError:
            return False
        return True

    def schedule(self, delay: float, update: Update) -> bool:
        """Queue ``update`` for delivery after ``delay`` seconds.

        Args:
            delay: Seconds from now.
            update: The status or message.

        Returns:
            ``False`` if it was dropped (no URL configured, or the queue is full).
        """
        if not self.enabled:
            return False
        if self._pending >= self._config.max_pending_webhooks:
            self._stats.webhook_updates_dropped += 1
            logger.warning("sandbox webhook queue full; update dropped")
            return False
        self._pending += 1
        self._idle.clear()
        self._push(time.monotonic() + max(0.0, delay), update)
        return True

    def _push(self, due: float, payload: Update | _Post) -> None:
        heapq.heappush(self._heap, _Due(due, next(self._seq), payload))
        self._wakeup.set()

    def _done(self, updates: int) -> None:
        self._pending -= updates
        if self._pending <= 0:
            self._pending = 0
            self._idle.set()

    async def _schedule_loop(self) -> None:
        while True:
            now = time.monotonic()
            while self._heap and self._heap[0].due <= now:
                self._ready.put_nowait(heapq.heappop(self._heap).payload)
            self._wakeup.clear()
            timeout = self._heap[0].due - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _worker(self) -> None:
        while True:
            first = await self._ready.get()
            if isinstance(first, _Post):
                await self._post(first)
                continue
            batch = [first]
            deadline = time.monotonic() + self._config.batch_window_ms / 1000
            while len(batch) < self._config.batch_max:
                try:
                    nxt = self._ready.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        nxt = await asyncio.wait_for(self._ready.get(), left)
                    except TimeoutError:
                        break
                if isinstance(nxt, _Post):
                    self._ready.put_nowait(nxt)  # a retry is posted on its own
                    break
                batch.append(nxt)
            await self._post(_Post(raw=self._body(batch), updates=len(batch)))

    def _body(self, batch: list[Update]) -> bytes:
        cfg = self._config
        value: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "metadata": {
                "display_phone_number": cfg.display_phone_number,
                "phone_number_id": cfg.phone_number_id,
            },
        }
        contacts: list[dict[str, Any]] = []
        for update in batch:
            if update.contact is not None and update.contact not in contacts:
                contacts.append(update.contact)
        if contacts:
            value["contacts"] = contacts
        for kind in ("messages", "statuses"):
            items = [u.item for u in batch if u.kind == kind]
            if items:
                value[kind] = items
        body = {
            "object": "whatsapp_business_account",
            "entry": [{"id": cfg.waba_id, "changes": [{"value": value, "field": "messages"}]}],
        }
        return encode_like_meta(body)

    async def _post(self, post: _Post) -> None:
        assert self._session is not None  # noqa: S101 - workers run only after start()
        assert self._config.webhook_url is not None  # noqa: S101 - enabled() checked at start
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(self._config.app_secret, post.raw),
            "User-Agent": "facebookexternalua",
        }
        status: int | None = None
        try:
            async with self._session.post(
                self._config.webhook_url, data=post.raw, headers=headers
            ) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            logger.debug("sandbox webhook POST failed: %s", type(exc).__name__)
        if status == 200:
            self._stats.webhook_posts += 1
            self._stats.webhook_updates_delivered += post.updates
            self.posted.append(post.raw)
            self._done(post.updates)
            return
        if post.attempt >= self._config.webhook_max_attempts:
            logger.warning(
                "sandbox webhook given up after %d attempts (last status %s)", post.attempt, status
            )
            self._stats.webhook_updates_failed += post.updates
            self._done(post.updates)
            return
        # Meta retries at once, then with decreasing frequency (reference §3.2).
        delay = 0.0
        if post.attempt > 1:
            delay = self._config.webhook_retry_base_ms / 1000 * 2 ** (post.attempt - 2)
        self._stats.webhook_retries += 1
        post.attempt += 1
        self._push(time.monotonic() + delay, post)
