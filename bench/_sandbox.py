"""The WhatsApp sandbox as its own process (``bridge sandbox serve``), and what it received."""

from __future__ import annotations

__all__ = ["SandboxProcess"]

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from bench._daemon import bridge_executable
from bench._net import free_port, http_get


class SandboxProcess:
    """``bridge sandbox serve`` on a free port, with Meta's limits opened wide.

    Its throughput limit is set far above anything the relay can do, so the relay's own limiter
    (the WhatsApp channel's ``rate_per_second``) is what the relay scenario measures; no webhook
    URL is given, so its status callbacks do not load the daemon.

    Args:
        workdir: where its log goes.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log_path = workdir / f"sandbox-{self.port}.log"
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        log = self._log_path.open("ab")
        try:
            self._process = await asyncio.create_subprocess_exec(
                *bridge_executable(),
                "sandbox",
                "serve",
                "--port",
                str(self.port),
                "--rate",
                "1000000",
                "--pair-burst",
                "1000000",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        for _ in range(300):
            status, _ = await http_get(self.port, "/_sandbox/stats", timeout=1.0)
            if status == 200:
                return self
            if self._process.returncode is not None:
                break
            await asyncio.sleep(0.1)
        await self.__aexit__(None, None, None)
        raise RuntimeError(f"sandbox did not start; see {self._log_path}")

    async def messages(self) -> list[dict[str, Any]]:
        """Every message the sandbox accepted (``GET /_sandbox/messages``)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as client:
            response = await client.get("/_sandbox/messages")
            response.raise_for_status()
            data: list[dict[str, Any]] = response.json()["data"]
            return data

    async def reset(self) -> None:
        """Forget what was received (``POST /_sandbox/reset``)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            (await client.post("/_sandbox/reset")).raise_for_status()

    async def receipt_figures(self) -> dict[str, Any]:
        """Messages received, duplicate sends (same outbox id twice) and the receive rate."""
        messages = await self.messages()
        per_row = Counter(m.get("biz_opaque_callback_data") for m in messages)
        stamps = sorted(float(m["timestamp"]) for m in messages)
        span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
        return {
            "received": len(messages),
            "distinct_outbox_ids": len(per_row),
            "duplicate_sends": sum(n - 1 for n in per_row.values() if n > 1),
            "without_callback_data": per_row.get(None, 0),
            "receive_rate_per_s": round((len(stamps) - 1) / span, 1) if span else None,
        }

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is None:
            return
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
