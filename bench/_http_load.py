"""HTTP load generator, run as its own process: ``python -m bench._http_load SPEC_JSON``.

Raw asyncio HTTP/1.1 with keep-alive, for boxes without ``wrk``: every request's bytes are built
(and signed) before the clock starts, and only the status line and ``Content-Length`` of each
answer are parsed, so the client costs little next to the server it measures. One request in
flight per connection (no pipelining).

The workload is signed WhatsApp status webhooks (:func:`bench._messages.status_webhook`), POST
``i`` carrying wamids ``i * batch .. i * batch + batch - 1``. Prints one JSON object on stdout
and writes the index of every POST answered 2xx, one a line, to ``acked_path``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson

from bench._latency import summarise
from bench._messages import sign, status_webhook


@dataclass(frozen=True, kw_only=True)
class HttpLoadSpec:
    """What to send.

    Attributes:
        port: the daemon's HTTP port on 127.0.0.1.
        path: ``/webhooks/whatsapp``.
        connections: concurrent keep-alive connections.
        posts: POSTs in total.
        batch: statuses per POST.
        run: wamid prefix unique to this run.
        app_secret: signs each body (``X-Hub-Signature-256``).
        phone_number_id: the business number in each body.
        time_limit_s: stop sending after this many seconds.
        acked_path: where to write the indexes of POSTs answered 2xx.
    """

    port: int
    path: str
    connections: int
    posts: int
    batch: int
    run: str
    app_secret: str
    phone_number_id: str
    time_limit_s: float
    acked_path: str


def build_requests(spec: HttpLoadSpec) -> list[bytes]:
    """Every POST's bytes, signed, in order."""
    requests = []
    for i in range(spec.posts):
        body = status_webhook(
            spec.run, i * spec.batch, spec.batch, phone_number_id=spec.phone_number_id
        )
        head = (
            f"POST {spec.path} HTTP/1.1\r\nHost: 127.0.0.1:{spec.port}\r\n"
            f"Content-Type: application/json\r\nX-Hub-Signature-256: "
            f"{sign(spec.app_secret, body)}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        requests.append(head.encode("ascii") + body)
    return requests


@dataclass
class _Tally:
    next_index: int = 0
    errors: int = 0


async def _worker(
    spec: HttpLoadSpec,
    requests: list[bytes],
    tally: _Tally,
    latencies: list[int],
    statuses: Counter[int],
    acked: list[int],
    deadline: float,
) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", spec.port)
    except OSError:
        tally.errors += 1
        return
    try:
        while tally.next_index < len(requests) and time.monotonic() < deadline:
            index = tally.next_index
            tally.next_index += 1
            started = time.perf_counter_ns()
            writer.write(requests[index])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            at = head.lower().find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 : head.index(b"\r\n", at)])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter_ns() - started)
            statuses[status] += 1
            if 200 <= status < 300:
                acked.append(index)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        tally.errors += 1
    finally:
        writer.close()


async def run_load(spec: HttpLoadSpec) -> dict[str, Any]:
    """Send every POST and return the figures."""
    requests = build_requests(spec)
    tally = _Tally()
    latencies: list[int] = []
    statuses: Counter[int] = Counter()
    acked: list[int] = []
    started = time.perf_counter()
    deadline = time.monotonic() + spec.time_limit_s
    await asyncio.gather(
        *(
            _worker(spec, requests, tally, latencies, statuses, acked, deadline)
            for _ in range(spec.connections)
        )
    )
    elapsed = time.perf_counter() - started
    with open(spec.acked_path, "w", encoding="ascii") as fh:
        fh.write("\n".join(str(i) for i in acked))
    return {
        **summarise(latencies, elapsed),
        "client": "asyncio",
        "sent": tally.next_index,
        "ok_2xx": len(acked),
        "http_statuses": {str(k): v for k, v in statuses.items()},
        "errors": tally.errors,
        "hit_time_limit": tally.next_index < spec.posts,
    }


def main() -> None:
    """Entry point: the spec is one JSON argument; the figures go to stdout."""
    spec = HttpLoadSpec(**orjson.loads(sys.argv[1]))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        result = asyncio.run(run_load(spec))
    else:
        result = uvloop.run(run_load(spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
