"""The MLLP listener: frames in, store, then ACK (reference ``hl7v2.md`` §5.3, §0 items 5-8).

A block is ``0x0B`` + message + ``0x1C 0x0D``. Each connection is an :class:`asyncio.Protocol`
with its own framer and one worker task, so ACKs leave in the order frames arrived while
connections never wait for each other (the sink batches commits across them).

For each frame the worker translates, builds an :class:`bridge.domain.InboundMessage`, awaits
``sink.ingest`` and only then writes the answer:

=====================  =======================================================================
ingest outcome         answer
=====================  =======================================================================
ACCEPTED, DUPLICATE,   ``AA`` (``CA`` when MSH-15/16 ask for enhanced mode)
CONFLICT
QUARANTINED            ``AR`` (``CR``) with an ERR segment naming the first fatal problem
StoreUnavailable       ``AE`` (``CE``): nothing was stored, the sender should resend
=====================  =======================================================================

An incoming ACK is stored but never answered (answering ACKs loops). Bad input never stops
other connections: a frame over ``max_frame_bytes`` gets ``AR`` and is skipped up to its end
block; bytes outside any block (other than blank lines and NULs) close that connection after
its pending answers are written; a frame cut short by EOF is logged and dropped; a connection
silent for ``idle_timeout`` seconds is closed. Logs carry ids and codes only.
"""

from __future__ import annotations

__all__ = ["ListenerConfig", "MllpListener"]

import asyncio
import ipaddress
import socket
import ssl
from collections import deque
from dataclasses import dataclass, field
from typing import cast

from structlog.typing import FilteringBoundLogger

from bridge.domain import InboundMessage, IngestOutcome, Translation, payload_hash
from bridge.errors import StoreUnavailable
from bridge.ports import EventSink
from connectors.hl7v2._ack import AckCode, build_ack
from connectors.hl7v2._translate import (
    CONNECTOR,
    Header,
    TranslateConfig,
    read_header,
    translate_frame,
)

START = b"\x0b"
END = b"\x1c\r"
CONTENT_TYPE = "application/hl7-v2"
#: frames queued on one connection before we stop reading from it (back-pressure)
_MAX_QUEUED = 256
#: bytes kept from an oversized frame to read its MSH for the answer
_HEAD_BYTES = 8192

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, kw_only=True)
class ListenerConfig:
    """How the listener binds and answers.

    Attributes:
        host: address to bind.
        port: TCP port (0: any free port, see :attr:`MllpListener.port`).
        max_frame_bytes: largest message accepted; larger ones get ``AR``.
        idle_timeout: seconds without traffic before a connection is closed (None: never).
        ssl_context: TLS server context, or None for plain TCP.
        allow: sender networks allowed to connect (empty: everyone).
        application: our MSH-3 in answers to messages whose MSH cannot be read.
        facility: our MSH-4 in those answers.
        translate: the interface's translation rules.
    """

    host: str = "127.0.0.1"
    port: int = 2575
    max_frame_bytes: int = 1024 * 1024
    idle_timeout: float | None = 300.0
    ssl_context: ssl.SSLContext | None = None
    allow: tuple[IPNetwork, ...] = ()
    application: str = "BRIDGE"
    facility: str = ""
    translate: TranslateConfig = field(default_factory=TranslateConfig)


class _Close:
    """Queue sentinel: write nothing more and close."""


class _TooLarge:
    __slots__ = ("head",)

    def __init__(self, head: bytes) -> None:
        self.head = head


_CLOSE = _Close()
_Item = bytes | _TooLarge | _Close


class MllpListener:
    """An asyncio MLLP server handing every frame to an :class:`bridge.ports.EventSink`."""

    def __init__(self, config: ListenerConfig, sink: EventSink, log: FilteringBoundLogger) -> None:
        self.config = config
        self.sink = sink
        self.log = log.bind(connector=CONNECTOR)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        """The bound TCP port (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("listener not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Bind and start accepting connections.

        Raises:
            OSError: the address cannot be bound.
        """
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self),
            self.config.host,
            self.config.port,
            ssl=self.config.ssl_context,
            backlog=256,
            reuse_address=True,
        )
        self.log.info(
            "hl7v2.listening",
            host=self.config.host,
            port=self.port,
            tls=self.config.ssl_context is not None,
        )

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting, let each connection finish the message in hand, then close.

        Frames received but not yet started are dropped unanswered: the sender resends
        them. Workers still busy after ``grace`` seconds are cancelled.
        """
        if self._server is not None:
            self._server.close()
        workers = []
        for conn in list(self._connections):
            conn.drain_and_close()
            if conn.worker is not None:
                workers.append(conn.worker)
        if workers:
            _done, pending = await asyncio.wait(workers, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


class _Connection(asyncio.Protocol):
    """One sender connection: framer, ordered worker, idle timer."""

    def __init__(self, listener: MllpListener) -> None:
        self.listener = listener
        self.config = listener.config
        self.transport: asyncio.Transport | None = None
        self.peer = "unknown"
        self.worker: asyncio.Task[None] | None = None
        self._buf = bytearray()
        self._scan_from = 0
        self._skipping = False
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._paused = False
        self._closing = False
        self._busy = False
        self._loop = asyncio.get_running_loop()
        self._last_activity = self._loop.time()
        self._idle_handle: asyncio.TimerHandle | None = None

    # -- transport callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport; uvloop's does not inherit from asyncio.Transport, so no isinstance
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "unknown"
        log = self.listener.log
        if self.config.allow and not _allowed(self.peer, self.config.allow):
            log.warning("hl7v2.peer_refused", peer=self.peer)
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.listener._connections.add(self)
        self.worker = self._loop.create_task(self._work())
        if self.config.idle_timeout:
            self._idle_handle = self._loop.call_later(self.config.idle_timeout, self._check_idle)
        log.debug("hl7v2.connected", peer=self.peer)

    def data_received(self, data: bytes) -> None:
        self._last_activity = self._loop.time()
        if self._closing:
            return
        buf = self._buf
        buf += data
        max_frame = self.config.max_frame_bytes
        while buf:
            if self._skipping:
                end = buf.find(END)
                if end < 0:
                    del buf[:-1]  # keep a trailing 0x1C whose 0x0D is still to come
                    return
                del buf[: end + 2]
                self._skipping = False
                continue
            if buf[0] != 0x0B:
                start = buf.find(START)
                junk = buf if start < 0 else buf[:start]
                if bytes(junk).strip(b"\r\n\t \x00"):
                    self.listener.log.warning(
                        "hl7v2.garbage_outside_frame", peer=self.peer, size=len(junk)
                    )
                    buf.clear()
                    self._finish()
                    return
                if start < 0:
                    buf.clear()
                    return
                del buf[:start]
                self._scan_from = 0
            end = buf.find(END, max(self._scan_from, 1))
            if end < 0:
                self._scan_from = max(len(buf) - 1, 1)
                if len(buf) - 1 > max_frame:
                    self._enqueue(_TooLarge(bytes(buf[1 : _HEAD_BYTES + 1])))
                    last = buf[-1:]
                    buf.clear()
                    buf += last
                    self._skipping = True
                    self._scan_from = 0
                return
            frame = bytes(buf[1:end])
            del buf[: end + 2]
            self._scan_from = 0
            restart = frame.rfind(START)
            if restart >= 0:
                # the sender began again without ending the previous block: keep the new one
                frame = frame[restart + 1 :]
            if len(frame) > max_frame:
                self._enqueue(_TooLarge(frame[:_HEAD_BYTES]))
            else:
                self._enqueue(frame)

    def eof_received(self) -> bool:
        """The sender half-closed (``shutdown(SHUT_WR)``): answer what it sent, then close.

        Returning True keeps our side open for writing; without it asyncio would close the
        transport and a stored message would never get its ACK.
        """
        self._finish()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buf and not self._skipping and bytes(self._buf).strip(b"\r\n\t \x00"):
            self.listener.log.warning("hl7v2.incomplete_frame", peer=self.peer, size=len(self._buf))
        self._buf.clear()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self._closing = True
        # frames already received are still stored; their answers have nowhere to go
        self._queue.append(_CLOSE)
        self._wakeup.set()
        self.listener._connections.discard(self)

    # -- queue and worker ------------------------------------------------------------------
    def _enqueue(self, item: _Item) -> None:
        self._queue.append(item)
        self._wakeup.set()
        if len(self._queue) >= _MAX_QUEUED and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _finish(self) -> None:
        """Stop reading; close once the answers already due are written."""
        self._closing = True
        self._queue.append(_CLOSE)
        self._wakeup.set()

    def drain_and_close(self) -> None:
        """Listener shutdown: stop reading, drop frames not started, close after the current one."""
        self._closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._queue.clear()
        self._queue.append(_CLOSE)
        self._wakeup.set()

    def _check_idle(self) -> None:
        timeout = self.config.idle_timeout
        if not timeout or self.transport is None or self.transport.is_closing():
            return
        idle = self._loop.time() - self._last_activity
        if idle >= timeout and not self._queue and not self._busy:
            self.listener.log.info("hl7v2.idle_close", peer=self.peer)
            self._finish()
            return
        self._idle_handle = self._loop.call_later(max(timeout - idle, 0.05), self._check_idle)

    async def _work(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                item = queue.popleft()
                if self._paused and len(queue) < _MAX_QUEUED // 2 and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                if isinstance(item, _Close):
                    if self.transport is not None:
                        self.transport.close()
                    return
                self._busy = True
                try:
                    answer = await (
                        self._too_large(item) if isinstance(item, _TooLarge) else self._handle(item)
                    )
                finally:
                    self._busy = False
                    self._last_activity = self._loop.time()
                if (
                    answer is not None
                    and self.transport is not None
                    and not self.transport.is_closing()
                ):
                    self.transport.write(b"".join((START, answer, END)))
        except asyncio.CancelledError:
            raise
        except Exception:
            self.listener.log.exception("hl7v2.connection_failed", peer=self.peer)
            if self.transport is not None:
                self.transport.close()

    async def _too_large(self, item: _TooLarge) -> bytes | None:
        header = read_header(item.head)
        self.listener.log.warning(
            "hl7v2.frame_too_large",
            peer=self.peer,
            message_id=header.control_id if header else None,
            limit=self.config.max_frame_bytes,
        )
        if header is not None and header.message_type == "ACK":
            return None
        return self._ack(
            header,
            AckCode.REJECT,
            "frame.too_large",
            "message larger than the listener accepts",
            None,
        )

    def _ack(
        self,
        header: Header | None,
        code: AckCode,
        reason: str | None,
        text: str | None,
        where: str | None,
    ) -> bytes:
        return build_ack(
            header,
            code,
            reason_code=reason,
            text=text,
            where=where,
            application=self.config.application,
            facility=self.config.facility,
        )

    async def _handle(self, frame: bytes) -> bytes | None:
        listener = self.listener
        translation, header = translate_frame(frame, self.config.translate)
        sender = self.peer
        if header is not None and (header.sending_application or header.sending_facility):
            sender = header.sender
        source_id = translation.message_id or f"sha256:{payload_hash(frame)}"
        message = InboundMessage(
            connector=CONNECTOR,
            sender=sender,
            source_id=source_id,
            payload=frame,
            translation=translation,
            content_type=CONTENT_TYPE,
        )
        is_ack = header is not None and header.message_type == "ACK"
        try:
            outcome = await listener.sink.ingest(message)
        except StoreUnavailable:
            listener.log.warning("hl7v2.store_unavailable", message_id=source_id)
            if is_ack:
                return None
            return self._ack(
                header, AckCode.ERROR, "store.unavailable", "not stored, please resend", None
            )
        except Exception:
            listener.log.exception("hl7v2.ingest_failed", message_id=source_id)
            if is_ack:
                return None
            return self._ack(
                header, AckCode.ERROR, "store.unavailable", "not stored, please resend", None
            )
        _log_outcome(listener.log, source_id, outcome, translation)
        if is_ack:
            return None
        if outcome is IngestOutcome.QUARANTINED:
            fatal = next((p for p in translation.problems if p.fatal), None)
            code = fatal.code if fatal else "message.rejected"
            text = fatal.message if fatal else "message rejected"
            return self._ack(header, AckCode.REJECT, code, text, fatal.field if fatal else None)
        return self._ack(header, AckCode.ACCEPT, None, None, None)


def _log_outcome(
    log: FilteringBoundLogger, message_id: str, outcome: IngestOutcome, translation: Translation
) -> None:
    if outcome is IngestOutcome.ACCEPTED and not translation.problems:
        return  # the hot path: nothing worth a line
    log.info(
        "hl7v2.ingested",
        message_id=message_id,
        outcome=outcome.value,
        events=len(translation.events),
        problems=[p.code for p in translation.problems],
    )


def _allowed(peer: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)
