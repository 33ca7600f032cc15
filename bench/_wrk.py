"""Drive ``wrk`` (Debian package) with pre-signed webhook POSTs.

wrk cannot compute HMACs in its Lua, so every request is signed here and written to a file, one
``signature<TAB>body`` a line; the Lua script loads its thread's share in ``init`` (wrk's advice
for fast servers: pre-build requests, only look them up in ``request()``), stops each thread once
its share is answered, and prints one JSON line of figures from ``done``. wrk bounds the run in
time with ``-d``, but its main thread sleeps all of ``-d`` even when every thread has stopped, so
each thread prints a line when it is ready and when it is done; the wall time between the last
of each is the run's duration, and SIGINT then makes wrk print its figures at once. If a connection asks for more than its thread's share, the last request is
repeated: the daemon dedupes it, so it adds no row.
"""

from __future__ import annotations

__all__ = ["run_wrk", "wrk_path"]

import asyncio
import contextlib
import shutil
import signal
from pathlib import Path
from typing import Any

import orjson

from bench._http_load import HttpLoadSpec
from bench._messages import sign, status_webhook

_LUA = r"""
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  reqs = {}
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == tid then
      local sig, body = line:match("^([^\t]+)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", args[3], {
        ["Content-Type"] = "application/json",
        ["X-Hub-Signature-256"] = sig,
      }, body)
    end
    i = i + 1
  end
  idx, responses, ok, other = 0, 0, 0, 0
  io.write("BENCHREADY\n")
  io.stdout:flush()
end

function request()
  if idx < #reqs then idx = idx + 1 end
  return reqs[idx]
end

function response(status, headers, body)
  responses = responses + 1
  if status >= 200 and status < 300 then ok = ok + 1 else other = other + 1 end
  if responses == #reqs then
    io.write("BENCHDONE\n")
    io.stdout:flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local ok_total, other_total, sent = 0, 0, 0
  for _, t in ipairs(threads) do
    ok_total = ok_total + t:get("ok")
    other_total = other_total + t:get("other")
    sent = sent + t:get("idx")
  end
  local e = summary.errors
  io.write(string.format(
    '\nBENCHJSON {"answered":%d,"duration_us":%d,"ok_2xx":%d,"non_2xx":%d,"sent":%d,' ..
    '"p50_us":%d,"p99_us":%d,"max_us":%d,"errors":%d}\n',
    summary.requests, summary.duration, ok_total, other_total, sent,
    latency:percentile(50.0), latency:percentile(99.0), latency.max,
    e.connect + e.read + e.write + e.timeout))
end
"""


async def _watch(
    process: asyncio.subprocess.Process, threads: int, limit_s: float
) -> tuple[float, float, list[str]]:
    """Time the run from the last BENCHREADY to the last BENCHDONE, then stop wrk with SIGINT."""
    assert process.stdout is not None
    loop = asyncio.get_running_loop()
    ready = done = 0
    started = finished = 0.0
    lines: list[str] = []
    deadline = loop.time() + limit_s + 5
    while done < threads and loop.time() < deadline:
        try:
            raw = await asyncio.wait_for(
                process.stdout.readline(), max(0.1, deadline - loop.time())
            )
        except TimeoutError:
            break
        if not raw:
            break
        text = raw.decode(errors="replace").strip()
        if text == "BENCHREADY":
            ready += 1
            started = loop.time() if ready == threads else started
        elif text == "BENCHDONE":
            done += 1
            finished = loop.time() if done == threads else finished
        lines.append(text)
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
    rest, _ = await process.communicate()
    lines += rest.decode(errors="replace").splitlines()
    return started, finished, lines


def wrk_path() -> str | None:
    """Where ``wrk`` is, or None (the asyncio client is used instead)."""
    return shutil.which("wrk")


async def run_wrk(spec: HttpLoadSpec, workdir: Path, *, threads: int = 1) -> dict[str, Any]:
    """Run the webhook load with wrk and return figures shaped like the asyncio client's.

    Args:
        spec: the load (its ``acked_path`` is not written: wrk cannot say which POSTs got 2xx).
        workdir: where the request file and the Lua script go.
        threads: wrk threads (one is plenty against one daemon on two cores).

    Raises:
        RuntimeError: wrk printed no figures or overran its bound.
    """
    exe = wrk_path()
    if exe is None:
        raise RuntimeError("wrk not installed")
    requests_file = workdir / f"wrk-{spec.run}.tsv"
    with requests_file.open("wb") as fh:
        for i in range(spec.posts):
            body = status_webhook(
                spec.run, i * spec.batch, spec.batch, phone_number_id=spec.phone_number_id
            )
            fh.write(sign(spec.app_secret, body).encode() + b"\t" + body + b"\n")
    script = workdir / "webhooks.lua"
    script.write_text(_LUA, encoding="utf-8")
    connections = max(spec.connections, threads)
    process = await asyncio.create_subprocess_exec(
        exe,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{int(spec.time_limit_s)}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{spec.port}",
        "--",
        str(requests_file),
        str(threads),
        spec.path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        started, finished, lines = await asyncio.wait_for(
            _watch(process, threads, spec.time_limit_s), spec.time_limit_s + 60
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError("wrk overran its time bound") from None
    line = next((x for x in lines if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no figures (exit {process.returncode})")
    raw = orjson.loads(line.removeprefix("BENCHJSON "))
    elapsed = finished - started if finished > started else raw["duration_us"] / 1e6
    return {
        "answered": raw["answered"],
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(raw["answered"] / elapsed, 1) if elapsed else None,
        "p50_ms": round(raw["p50_us"] / 1000, 3),
        "p99_ms": round(raw["p99_us"] / 1000, 3),
        "max_ms": round(raw["max_us"] / 1000, 3),
        "client": f"wrk -t{threads} -c{connections}",
        "sent": raw["sent"],
        "ok_2xx": raw["ok_2xx"],
        "non_2xx": raw["non_2xx"],
        "errors": raw["errors"],
        "hit_time_limit": raw["answered"] < spec.posts,
    }
