"""The channel against the real sandbox over loopback HTTP, webhooks included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import reduce
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette

from bridge.domain import ReplyReceived, StatusUpdated
from bridge.domain.delivery import advance
from bridge.errors import ChannelThrottled, ChannelUnavailable
from bridge.ports import Notification, PluginContext, SystemClock
from bridge.sandbox import Faults, Sandbox, SandboxConfig, SandboxServer
from bridge.testing import MemorySink
from bridge.whatsapp import ENGINE_TEMPLATES, WhatsAppChannel, sync_templates, webhook_routes

PATIENT = "+573001230001"


class Bridge:
    """Our webhook routes served on loopback, a MemorySink behind them, and the channel."""

    def __init__(self, channel: WhatsAppChannel, sink: MemorySink, server: SandboxServer) -> None:
        self.channel, self.sink, self.server = channel, sink, server

    @property
    def sandbox(self) -> Sandbox:
        return self.server.sandbox

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)


@pytest.fixture(name="bridge")
async def _bridge() -> AsyncIterator[Bridge]:
    sink = MemorySink()
    # The webhook app must exist before the sandbox (which needs its URL) and the channel
    # (which needs the sandbox's URL), so the routes read the channel lazily.
    app = Starlette()
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            await asyncio.sleep(0.01)
    hook_port = server.servers[0].sockets[0].getsockname()[1]
    hook = f"http://127.0.0.1:{hook_port}/webhooks/whatsapp"
    sandbox = SandboxServer(SandboxConfig(port=0, webhook_url=hook, seed=7))
    await sandbox.start()
    try:
        context = PluginContext(
            section_path="whatsapp", data_dir=Path("/tmp"), secrets={}, clock=SystemClock()
        )
        channel = WhatsAppChannel.from_config(
            {"base_url": sandbox.url, "timeout_seconds": 0.5, "patient_spacing_seconds": 0},
            context,
        )
        for route in webhook_routes(
            channel, sink, verify_token=None, app_secret=channel.app_secret
        ):
            app.router.routes.append(route)
        yield Bridge(channel, sink, sandbox)
        await channel.client.aclose()
    finally:
        await sandbox.stop()
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


def reminder(outbox_id: int, to: str = PATIENT) -> Notification:
    return Notification(
        outbox_id=outbox_id,
        to=to,
        kind="template",
        content={
            "name": "appointment_reminder",
            "language": "es",
            "body": ["Ana", "12 de marzo", "10:30", "Sede Norte"],
            "buttons": [
                {"index": 0, "sub_type": "quick_reply", "payload": f"confirm.tok{outbox_id}"},
                {"index": 1, "sub_type": "quick_reply", "payload": f"reschedule.tok{outbox_id}"},
                {"index": 2, "sub_type": "quick_reply", "payload": f"cancel.tok{outbox_id}"},
            ],
        },
    )


def statuses(sink: MemorySink, wamid: str) -> list[StatusUpdated]:
    return [e for e in sink.events if isinstance(e, StatusUpdated) and e.message_id == wamid]


class TestAgainstTheSandbox:
    async def test_engine_templates_match_the_sandbox_waba(self, bridge: Bridge) -> None:
        templates, mismatches = await sync_templates(bridge.channel.client, ENGINE_TEMPLATES)
        assert [str(m) for m in mismatches] == []
        assert len(templates) >= len(ENGINE_TEMPLATES)

    async def test_template_sent_and_its_signed_statuses_come_back_matched(
        self, bridge: Bridge
    ) -> None:
        # Given a reminder sent through the channel
        receipt = await bridge.channel.send(reminder(41))
        # When the sandbox delivers and the patient reads it
        await bridge.wait_for(
            lambda: any(s.status == "read" for s in statuses(bridge.sink, receipt.message_id))
        )
        # Then every status carries our outbox id and folds to "read"
        seen = statuses(bridge.sink, receipt.message_id)
        assert {s.callback for s in seen} == {"41"}
        assert reduce(advance, [s.status for s in seen], "accepted") == "read"

    async def test_patient_tap_comes_back_as_intent_and_token(self, bridge: Bridge) -> None:
        receipt = await bridge.channel.send(reminder(42))
        bridge.sandbox.reply(PATIENT, button="confirm")
        await bridge.wait_for(lambda: any(isinstance(e, ReplyReceived) for e in bridge.sink.events))
        (tap,) = [e for e in bridge.sink.events if isinstance(e, ReplyReceived)]
        assert (tap.intent, tap.token, tap.channel_user) == ("confirm", "tok42", PATIENT)
        assert tap.context_id == receipt.message_id

    async def test_scripted_faults_end_with_every_message_sent_once(self, bridge: Bridge) -> None:
        bridge.sandbox.set_faults(
            Faults(
                status_429_rate=0.15,
                status_5xx_rate=0.15,
                timeout_rate=0.05,
                timeout_seconds=1.0,
                seed=3,
            )
        )
        sent: dict[int, str] = {}
        pending = list(range(100, 140))
        async with asyncio.timeout(60):
            while pending:
                outbox_id = pending.pop(0)
                to = f"+5730012{outbox_id:05d}"
                try:
                    receipt = await bridge.channel.send(reminder(outbox_id, to))
                except (ChannelThrottled, ChannelUnavailable):
                    pending.append(outbox_id)  # the outbox retries it later
                    await asyncio.sleep(0.05)
                    continue
                sent[outbox_id] = receipt.message_id
        assert sorted(sent) == list(range(100, 140))
        accepted = bridge.sandbox.list_messages()
        callbacks = [m.get("biz_opaque_callback_data") for m in accepted]
        assert sorted(int(c) for c in callbacks if c is not None) == list(range(100, 140))
