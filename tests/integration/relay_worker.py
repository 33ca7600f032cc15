"""A relay in its own OS process, for the multi-process race tests (not collected by pytest).

Usage: python relay_worker.py URL MODE SECONDS
  MODE "send": run the real Relay with a channel that prints "SENT <outbox_id> <relay_id>"
  for every row it is handed, until no due row is left for SECONDS.
  MODE "hold": acquire every due row with a short lease, print "HELD <id>", then hang (the test
  kills it with SIGKILL mid-lease).
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from bridge.config import RelaySettings
from bridge.engine.relay import Relay
from bridge.logging import configure_logging, get_logger
from bridge.metrics import Metrics
from bridge.ports import Notification, SendReceipt, SystemClock
from bridge.store import Database, SqlOutbox


class PrintingChannel:
    """A channel that 'sends' by printing the outbox id (the test counts them)."""

    name = "whatsapp"

    def __init__(self, relay_id: str) -> None:
        self.relay_id = relay_id

    async def send(self, notification: Notification) -> SendReceipt:
        await asyncio.sleep(0.001)
        print(f"SENT {notification.outbox_id} {self.relay_id}", flush=True)
        return SendReceipt(message_id=f"wamid.{notification.outbox_id}")

    def parse_webhook(self, headers, body):
        return []


async def main(url: str, mode: str, seconds: float) -> None:
    configure_logging(fmt="json", level="warning")
    db = Database(url)
    clock = SystemClock()
    box = SqlOutbox(db, clock)
    if mode == "hold":
        rows = await box.acquire("holder", timedelta(seconds=seconds), 1000, clock.now())
        for row in rows:
            print(f"HELD {row.id}", flush=True)
        print("READY", flush=True)
        await asyncio.sleep(3600)
        return
    settings = RelaySettings(batch_size=25, tick_seconds=0.05, lease_seconds=30)
    channel = PrintingChannel("pending")
    relay = Relay(outbox=box, channels={"whatsapp": channel}, clock=clock, settings=settings,
                  metrics=Metrics(), log=get_logger())
    channel.relay_id = relay.relay_id
    idle_since = asyncio.get_running_loop().time()
    while asyncio.get_running_loop().time() - idle_since < seconds:
        if await relay.tick():
            idle_since = asyncio.get_running_loop().time()
        else:
            await asyncio.sleep(0.05)
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
