"""MLLP load generator, run as its own process: ``python -m bench._mllp_load SPEC_JSON``.

It behaves like a HIS interface engine: frames are built before the clock starts, and on each
connection the next message goes out only after the ACK of the previous one is read (no
pipelining). Two connection styles:

* ``persistent``: N long-lived connections (how an interface engine talks to us);
* ``reconnect``: a new connection per message, reading the answer until the end block or EOF.
  hl7apy's MLLPServer answers one message per connection, then closes, and writes whatever its
  handler returns (framed or not), so this style accepts both.

Prints one JSON object on stdout (answers, rate, p50/p99 ACK latency, ACK codes) and writes the
MSH-10 of every ``AA``-acknowledged message, one a line, to ``acked_path``.
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
from bench._messages import MLLP_END, control_id, siu_frame


@dataclass(frozen=True, kw_only=True)
class MllpLoadSpec:
    """What to send and how.

    Attributes:
        host: listener address.
        port: listener port.
        connections: concurrent connections.
        count: messages in total.
        run: id prefix unique to this run (keeps MSH-10s unique).
        mode: ``persistent`` or ``reconnect``.
        time_limit_s: stop sending after this many seconds, whatever is left.
        acked_path: where to write the AA-acknowledged control ids.
    """

    host: str
    port: int
    connections: int
    count: int
    run: str
    mode: str
    time_limit_s: float
    acked_path: str


@dataclass
class _Tally:
    next_index: int = 0
    errors: int = 0


def _ack_code(reply: bytes) -> str:
    at = reply.find(b"MSA|")
    return reply[at + 4 : at + 6].decode("ascii", "replace") if at >= 0 else "none"


async def _persistent_worker(
    spec: MllpLoadSpec,
    frames: list[bytes],
    tally: _Tally,
    latencies: list[int],
    codes: Counter[str],
    acked: list[str],
    deadline: float,
) -> None:
    reader, writer = await asyncio.open_connection(spec.host, spec.port)
    try:
        while tally.next_index < len(frames) and time.monotonic() < deadline:
            index = tally.next_index
            tally.next_index += 1
            started = time.perf_counter_ns()
            writer.write(frames[index])
            reply = await reader.readuntil(MLLP_END)
            latencies.append(time.perf_counter_ns() - started)
            code = _ack_code(reply)
            codes[code] += 1
            if code == "AA":
                acked.append(control_id(spec.run, index))
    except (OSError, asyncio.IncompleteReadError):
        tally.errors += 1
    finally:
        writer.close()


async def _reconnect_worker(
    spec: MllpLoadSpec,
    frames: list[bytes],
    tally: _Tally,
    latencies: list[int],
    codes: Counter[str],
    acked: list[str],
    deadline: float,
) -> None:
    while tally.next_index < len(frames) and time.monotonic() < deadline:
        index = tally.next_index
        tally.next_index += 1
        started = time.perf_counter_ns()
        try:
            reader, writer = await asyncio.open_connection(spec.host, spec.port)
            try:
                writer.write(frames[index])
                reply = await _read_answer(reader)
            finally:
                writer.close()
        except OSError:
            tally.errors += 1
            continue
        if not reply:
            tally.errors += 1
            codes["none"] += 1
            continue
        latencies.append(time.perf_counter_ns() - started)
        code = _ack_code(reply)
        codes[code] += 1
        if code == "AA":
            acked.append(control_id(spec.run, index))


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    """Read until the MLLP end block, or until the peer closes (unframed answers)."""
    buf = bytearray()
    while MLLP_END not in buf:
        chunk = await reader.read(4096)
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


async def run_load(spec: MllpLoadSpec) -> dict[str, Any]:
    """Send ``spec.count`` messages and return the figures.

    Args:
        spec: the load to generate.
    """
    frames = [siu_frame(spec.run, i) for i in range(spec.count)]
    tally = _Tally()
    latencies: list[int] = []
    codes: Counter[str] = Counter()
    acked: list[str] = []
    worker = _persistent_worker if spec.mode == "persistent" else _reconnect_worker
    started = time.perf_counter()
    deadline = time.monotonic() + spec.time_limit_s
    await asyncio.gather(
        *(
            worker(spec, frames, tally, latencies, codes, acked, deadline)
            for _ in range(spec.connections)
        )
    )
    elapsed = time.perf_counter() - started
    with open(spec.acked_path, "w", encoding="ascii") as fh:
        fh.write("\n".join(acked))
    return {
        **summarise(latencies, elapsed),
        "sent": tally.next_index,
        "acked_aa": len(acked),
        "ack_codes": dict(codes),
        "errors": tally.errors,
        "hit_time_limit": tally.next_index < spec.count,
    }


def main() -> None:
    """Entry point: the spec is one JSON argument; the figures go to stdout."""
    spec = MllpLoadSpec(**orjson.loads(sys.argv[1]))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        result = asyncio.run(run_load(spec))
    else:
        result = uvloop.run(run_load(spec))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
