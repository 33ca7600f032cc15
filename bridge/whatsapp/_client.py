"""The Graph API client: send messages, list templates, mark as read.

Implements reference whatsapp.md §1 (sending; §1.6 success response), §2 (errors, through
:mod:`bridge.whatsapp._errors`) and §5 (template list with paging). Meta and the sandbox are the
same code path: only ``base_url`` differs.

Transport: httpx's interface over aiohttp's connection pool (PyPI ``httpx-aiohttp``). httpx's own
async transport tops out near 450 requests/s on this kind of box, below the relay's 1,000
messages/s target (DESIGN.md §5); the aiohttp transport reaches ~2,000/s behind the same API.

Retries here are short and in-process (tenacity): connect errors, timeouts and 5xx, up to
``attempts`` tries with jittered exponential waits that honour ``Retry-After``. Everything else,
and anything still failing, goes back to the outbox as a typed :class:`~bridge.errors.SendError`
for a durable retry. A retried *read timeout* can duplicate a send that Meta did accept (Meta has
no idempotency key); the echoed ``biz_opaque_callback_data`` lets the engine spot the duplicate.
"""

from __future__ import annotations

__all__ = ["DEFAULT_TEMPLATE_FIELDS", "GraphClient"]

import functools
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Self, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from bridge.errors import ChannelUnavailable, MessageRejected, SendError
from bridge.ports import Notification, SendReceipt
from bridge.whatsapp._errors import classify_graph_error
from bridge.whatsapp._payloads import build_message, build_read_receipt

#: Template fields read by ``list_templates`` (reference §5).
DEFAULT_TEMPLATE_FIELDS = "name,status,category,language,components,id,parameter_format"
#: Safety stop for template paging (250 templates per WABA max, 100 per page).
_MAX_PAGES = 100

_T = TypeVar("_T")


class _Transient(Exception):
    """Internal: a fault worth an in-process retry; carries the SendError to raise at the end."""

    def __init__(self, error: SendError) -> None:
        self.error = error
        super().__init__(str(error))


def default_transport(max_connections: int) -> httpx.AsyncBaseTransport:
    """The aiohttp-backed transport (see module docstring for why)."""
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    transport: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits, trust_env=False)
    return transport


class GraphClient:
    """Async, pooled client of the Graph API endpoints the bridge uses.

    Args:
        base_url: ``https://graph.facebook.com`` or the sandbox (``http://127.0.0.1:8081``).
        api_version: ``v25.0``.
        phone_number_id: the sending number's Graph id.
        waba_id: the WhatsApp Business Account id (templates).
        token: the bearer token; never logged.
        timeout: seconds for connect, read and write of one request.
        transport: an httpx transport (tests pass ``httpx.ASGITransport``); default aiohttp.
        attempts: in-process tries for transient faults (connect, timeout, 5xx), 1-5.
        max_wait: longest in-process wait between tries; a longer ``Retry-After`` is left to
            the outbox instead.
        max_connections: connection pool size.

    The client owns its pool: enter it (``async with``) or call :meth:`start` with an exit
    stack, so the pool is closed on shutdown.
    """

    def __init__(
        self,
        base_url: str,
        api_version: str,
        phone_number_id: str,
        waba_id: str,
        token: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        attempts: int = 3,
        max_wait: float = 5.0,
        max_connections: int = 256,
    ) -> None:
        if not 1 <= attempts <= 5:
            raise ValueError("attempts must be within 1..5")
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self.phone_number_id = phone_number_id
        self.waba_id = waba_id
        self._attempts = attempts
        self._max_wait = max_wait
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            timeout=httpx.Timeout(timeout),
            transport=transport if transport is not None else default_transport(max_connections),
            trust_env=False,
            follow_redirects=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self, exit_stack: AsyncExitStack) -> None:
        """Register the pool's cleanup on ``exit_stack``."""
        exit_stack.push_async_callback(self.aclose)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    @property
    def messages_path(self) -> str:
        """``/{version}/{phone-number-id}/messages``."""
        return f"/{self.api_version}/{self.phone_number_id}/messages"

    # --- public calls ----------------------------------------------------------------------

    async def send(self, notification: Notification) -> SendReceipt:
        """Check limits, send one notification, and return Meta's receipt.

        Raises:
            bridge.errors.MessageRejected: a limit or shape problem, before anything is sent.
            bridge.errors.SendError: the subclass chosen by the Graph error table.
        """
        payload = build_message(notification)
        return await self.send_payload(payload)

    async def send_payload(self, payload: dict[str, Any]) -> SendReceipt:
        """Send an already-built message body (see :func:`build_message`).

        Raises:
            bridge.errors.SendError: the subclass chosen by the Graph error table.
        """
        content = orjson.dumps(payload)
        response = await self._with_retries(lambda: self._post(self.messages_path, content))
        return _receipt(response)

    async def mark_read(self, wamid: str) -> None:
        """Mark an inbound message as read (blue ticks).

        Raises:
            bridge.errors.SendError: as for :meth:`send`.
        """
        content = orjson.dumps(build_read_receipt(wamid))
        await self._with_retries(lambda: self._post(self.messages_path, content))

    async def list_templates(
        self, *, fields: str = DEFAULT_TEMPLATE_FIELDS, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Every template of the WABA, following ``paging.next`` until it is absent.

        ``next`` is followed only when it points at our own ``base_url`` (the bearer token goes
        with it); otherwise the page is re-requested from ``base_url`` with the ``after`` cursor.

        Raises:
            bridge.errors.SendError: a page could not be fetched.
        """
        path = f"/{self.api_version}/{self.waba_id}/message_templates"
        params: dict[str, str] | None = {"fields": fields, "limit": str(limit)}
        url: str = path
        templates: list[dict[str, Any]] = []
        seen_after: set[str] = set()
        for _ in range(_MAX_PAGES):
            response = await self._with_retries(functools.partial(self._get, url, params))
            data = _json(response)
            page = data.get("data") if isinstance(data, dict) else None
            if not isinstance(page, list):
                raise MessageRejected("unparseable_response", "template list has no data array")
            templates.extend(item for item in page if isinstance(item, dict))
            paging = data.get("paging") if isinstance(data, dict) else None
            next_url = paging.get("next") if isinstance(paging, dict) else None
            if not isinstance(next_url, str) or not next_url:
                return templates
            cursors = paging.get("cursors") if isinstance(paging, dict) else None
            after = cursors.get("after") if isinstance(cursors, dict) else None
            if isinstance(after, str):
                if after in seen_after:
                    return templates  # a server repeating itself; stop rather than loop
                seen_after.add(after)
            if self._same_origin(next_url):
                url, params = next_url, None
            elif isinstance(after, str):
                url, params = path, {"fields": fields, "limit": str(limit), "after": after}
            else:
                raise MessageRejected(
                    "unparseable_response", "template paging points elsewhere without a cursor"
                )
        return templates

    # --- plumbing --------------------------------------------------------------------------

    def _same_origin(self, url: str) -> bool:
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        return (ours.scheme, ours.netloc) == (theirs.scheme, theirs.netloc)

    async def _post(self, path: str, content: bytes) -> httpx.Response:
        return await self._request(lambda: self._http.post(path, content=content))

    async def _get(self, url: str, params: dict[str, str] | None) -> httpx.Response:
        return await self._request(lambda: self._http.get(url, params=params))

    async def _request(self, call: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        """One HTTP exchange; maps transport faults and non-2xx answers to typed errors."""
        try:
            response = await call()
        except httpx.TimeoutException as exc:
            raise _Transient(ChannelUnavailable("timeout", "Graph request timed out")) from exc
        except httpx.TransportError as exc:
            raise _Transient(
                ChannelUnavailable("connect_error", f"cannot reach Graph ({type(exc).__name__})")
            ) from exc
        if 200 <= response.status_code < 300:
            return response
        error = classify_graph_error(
            response.status_code, response.content, response.headers.get("Retry-After")
        )
        if response.status_code >= 500 and isinstance(error, ChannelUnavailable):
            raise _Transient(error)
        raise error

    async def _with_retries(self, call: Callable[[], Awaitable[_T]]) -> _T:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=self._wait,
            retry=retry_if_exception(self._worth_retry),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await call()
        except _Transient as exc:
            raise exc.error from exc.__cause__
        raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover

    def _worth_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, _Transient):
            return False
        # A Retry-After longer than we are willing to block is the outbox's business.
        wait = exc.error.retry_after
        return wait is None or wait <= self._max_wait

    def _wait(self, state: RetryCallState) -> float:
        jitter = wait_random_exponential(multiplier=0.05, max=self._max_wait)(state)
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _Transient) and exc.error.retry_after is not None:
            return max(jitter, min(exc.error.retry_after, self._max_wait))
        return float(jitter)


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None


def _receipt(response: httpx.Response) -> SendReceipt:
    """Read ``{"contacts": [{"wa_id"}], "messages": [{"id", "message_status"?}]}`` (§1.6)."""
    data = _json(response)
    messages = data.get("messages") if isinstance(data, dict) else None
    first = messages[0] if isinstance(messages, list) and messages else None
    wamid = first.get("id") if isinstance(first, dict) else None
    if not isinstance(wamid, str) or not wamid:
        # Meta took it (2xx) but we cannot tell which wamid; retry later rather than lose it.
        raise ChannelUnavailable("unparseable_success", "2xx answer without a message id")
    contacts = data.get("contacts") if isinstance(data, dict) else None
    contact = contacts[0] if isinstance(contacts, list) and contacts else None
    recipient = None
    if isinstance(contact, dict):
        recipient = contact.get("wa_id") or contact.get("user_id")
    status = first.get("message_status") if isinstance(first, dict) else None
    return SendReceipt(
        message_id=wamid,
        accepted_status=status if isinstance(status, str) else "accepted",
        recipient_id=recipient if isinstance(recipient, str) else None,
    )
