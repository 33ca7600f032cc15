"""Loopback helpers: free ports and a tiny HTTP GET for readiness probes."""

from __future__ import annotations

__all__ = ["free_port", "http_get"]

import asyncio
import socket


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_get(port: int, path: str, *, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``http://127.0.0.1:{port}{path}`` with one short-lived connection.

    Returns:
        the status code and body; status 0 when nothing answered.
    """

    async def fetch() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
            )
            raw = await reader.read()
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        parts = head.split(b" ", 2)
        return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), body

    try:
        return await asyncio.wait_for(fetch(), timeout)
    except (OSError, TimeoutError):
        return 0, b""
