"""WhatsAppChannel: config validation, sending through the limits, webhook parsing."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.errors import ChannelThrottled, ConfigError, MessageRejected
from bridge.ports import Channel, Notification, PluginContext
from bridge.testing import FixedClock
from bridge.whatsapp import SendHeld, SignatureMismatch, WhatsAppChannel

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "whatsapp"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
META_SECRETS = {
    "BRIDGE_WHATSAPP_TOKEN": "test-token",
    "BRIDGE_WHATSAPP_APP_SECRET": "app-secret",
    "BRIDGE_WHATSAPP_VERIFY_TOKEN": "verify-me",
}


def context(
    secrets: dict[str, str] | None = None, clock: FixedClock | None = None
) -> PluginContext:
    return PluginContext(
        section_path="whatsapp",
        data_dir=Path("/tmp"),
        secrets=secrets or {},
        clock=clock or FixedClock(T0),
    )


def meta_section(**extra: object) -> dict[str, object]:
    section: dict[str, object] = {
        "base_url": "https://graph.facebook.com",
        "phone_number_id": "109876543210987",
        "waba_id": "102345678901234",
    }
    section.update(extra)
    return section


class TestFromConfig:
    def test_empty_section_targets_the_sandbox_with_its_defaults(self):
        channel = WhatsAppChannel.from_config({}, context())
        assert channel.settings.base_url == "http://127.0.0.1:8081"
        assert channel.settings.api_version == "v25.0"
        assert channel.settings.rate_per_second == 80.0
        assert channel.app_secret == b"sandbox-app-secret"
        assert channel.verify_token is None
        assert isinstance(channel, Channel)
        assert channel.name == "whatsapp"

    def test_meta_section_with_secrets(self):
        channel = WhatsAppChannel.from_config(
            meta_section(rate_per_second=1000, tier_limit=250, patient_spacing_seconds=10),
            context(META_SECRETS),
        )
        assert channel.settings.rate_per_second == 1000
        assert channel.limits.tier.limit == 250
        assert channel.app_secret == b"app-secret"
        assert channel.verify_token == "verify-me"

    def test_every_problem_is_reported_at_once(self):
        section = {
            "base_url": "http://graph.facebook.com",
            "api_version": "25",
            "phone_number_id": "abc",
            "rate_per_second": 5000,
            "patient_spacing_seconds": -1,
            "tier_limit": "lots",
            "timeout_seconds": 0,
            "retry_attempts": 9,
            "colour": "blue",
        }
        with pytest.raises(ConfigError) as info:
            WhatsAppChannel.from_config(section, context())
        keys = sorted(p.key for p in info.value.problems)
        assert keys == sorted(
            [
                "BRIDGE_WHATSAPP_APP_SECRET",
                "BRIDGE_WHATSAPP_TOKEN",
                "whatsapp.api_version",
                "whatsapp.base_url",
                "whatsapp.colour",
                "whatsapp.patient_spacing_seconds",
                "whatsapp.phone_number_id",
                "whatsapp.rate_per_second",
                "whatsapp.retry_attempts",
                "whatsapp.tier_limit",
                "whatsapp.timeout_seconds",
                "whatsapp.waba_id",
            ]
        )

    def test_secret_values_never_appear_in_the_error(self):
        with pytest.raises(ConfigError) as info:
            WhatsAppChannel.from_config(meta_section(rate_per_second=0), context(META_SECRETS))
        assert "test-token" not in str(info.value)
        assert "app-secret" not in str(info.value)


def clock_sleep(clock: FixedClock) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        clock.advance(timedelta(seconds=seconds))

    return sleep


def sandbox_channel(fake_graph: Any, clock: FixedClock, **section: object) -> WhatsAppChannel:
    channel = WhatsAppChannel.from_config(
        section, context({"BRIDGE_WHATSAPP_TOKEN": "test-token"}, clock)
    )
    return WhatsAppChannel(
        channel.settings,
        clock=clock,
        token="test-token",
        app_secret=channel.app_secret,
        verify_token=None,
        transport=httpx.ASGITransport(app=fake_graph),
        sleep=clock_sleep(clock),
    )


def reminder(outbox_id: int, to: str = "+573001230001") -> Notification:
    return Notification(
        outbox_id=outbox_id,
        to=to,
        kind="template",
        content={
            "name": "appointment_reminder",
            "language": "es",
            "body": ["Ana", "12 de marzo", "10:30", "Sede Norte"],
            "buttons": [{"index": 0, "sub_type": "quick_reply", "payload": "confirm.t0"}],
        },
    )


class TestSend:
    async def test_send_goes_out_and_spacing_holds_the_next_one(self, fake_graph):
        clock = FixedClock(T0)
        channel = sandbox_channel(fake_graph, clock)
        async with AsyncExitStack() as stack:
            await channel.start(stack)
            receipt = await channel.send(reminder(1))
            with pytest.raises(SendHeld) as info:
                await channel.send(reminder(2))
        assert receipt.message_id == "wamid.fake1"
        assert info.value.limit == "patient_spacing"
        assert len(fake_graph.requests) == 1
        assert fake_graph.requests[0].json["biz_opaque_callback_data"] == "1"

    async def test_rejected_message_uses_no_slot(self, fake_graph):
        clock = FixedClock(T0)
        channel = sandbox_channel(fake_graph, clock)
        bad = Notification(outbox_id=3, to="+573001230001", kind="text", content={"body": ""})
        with pytest.raises(MessageRejected):
            await channel.send(bad)
        await channel.send(reminder(4))  # not held: the rejected one reserved nothing
        await channel.client.aclose()

    async def test_pair_limit_backs_off_only_that_patient(self, fake_graph):
        clock = FixedClock(T0)
        channel = sandbox_channel(fake_graph, clock, patient_spacing_seconds=0)
        fake_graph.respond(400, {"error": {"code": 131056, "message": "(#131056) x"}})
        with pytest.raises(ChannelThrottled) as info:
            await channel.send(reminder(5))
        assert info.value.provider_code == 131056
        assert info.value.retry_after == 1.0
        with pytest.raises(SendHeld):
            await channel.send(reminder(6))
        await channel.send(reminder(7, to="+573001230002"))
        clock.advance(timedelta(seconds=1))
        await channel.send(reminder(8))
        assert fake_graph.unused() == []
        await channel.client.aclose()

    async def test_throughput_error_pauses_the_number(self, fake_graph):
        clock = FixedClock(T0)
        channel = sandbox_channel(fake_graph, clock)
        fake_graph.respond(
            400, {"error": {"code": 130429, "message": "(#130429) x"}}, headers={"Retry-After": "2"}
        )
        with pytest.raises(ChannelThrottled):
            await channel.send(reminder(9))
        assert channel.limits.rate.try_take() == pytest.approx(2.0)
        await channel.client.aclose()


def sign(body: bytes, secret: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class TestParseWebhook:
    def test_signed_body_gives_events(self):
        channel = WhatsAppChannel.from_config({}, context())
        body = (CORPUS / "webhook_status_read__pywa.json").read_bytes()
        events = channel.parse_webhook(
            {"x-hub-signature-256": sign(body, b"sandbox-app-secret")}, body
        )
        assert [e.type for e in events] == ["status.updated"]

    def test_bad_signature_raises(self):
        channel = WhatsAppChannel.from_config({}, context())
        body = (CORPUS / "webhook_status_read__pywa.json").read_bytes()
        with pytest.raises(SignatureMismatch):
            channel.parse_webhook({"X-Hub-Signature-256": sign(body, b"wrong")}, body)
        with pytest.raises(SignatureMismatch):
            channel.parse_webhook({}, body)
