"""Templates as code: sync and check against the sandbox; a paused template holds its sends."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import select

from bridge.domain import SourceRef, TemplateStatusChanged
from bridge.sandbox import SandboxConfig, SandboxServer
from bridge.store.tables import outbox
from tests.e2e.daemon import free_port, run_cli
from tests.integration.test_engine_loop import NOW, _harness, booked  # noqa: F401 - fixture


async def cli(*args: str, env: dict[str, str]):
    """The CLI in a thread, so the in-process sandbox keeps answering meanwhile."""
    return await asyncio.to_thread(run_cli, *args, env=env)


def template_event(status: str) -> TemplateStatusChanged:
    return TemplateStatusChanged(source=SourceRef(connector="whatsapp", message_id=f"t-{status}"),
                                 name="appointment_reminder", language="es", status=status,
                                 occurred_at=NOW)


class TestTemplateSync:
    async def test_sync_reads_the_account_and_check_finds_every_mapping(self, tmp_path):
        port = free_port()
        async with SandboxServer(SandboxConfig(port=port)):
            config = tmp_path / "c.toml"
            config.write_text(f'[whatsapp]\nbase_url = "http://127.0.0.1:{port}"\n'
                              '[sandbox]\nenabled = false\n')
            env = {"BRIDGE_DATA_DIR": str(tmp_path)}
            fresh = await cli("templates", "check", "--config", str(config), env=env)
            assert fresh.returncode == 2 and "bridge db upgrade" in fresh.stderr
            assert (await cli("db", "upgrade", env=env)).returncode == 0
            before = await cli("templates", "check", "--config", str(config), env=env)
            assert before.returncode == 2 and "sync" in before.stderr
            synced = await cli("templates", "sync", "--config", str(config), env=env)
            assert synced.returncode == 0, synced.stdout + synced.stderr
            assert "read 10 template(s)" in synced.stdout
            checked = await cli("templates", "check", "--config", str(config), env=env)
            assert checked.returncode == 0 and "match the account" in checked.stdout

    async def test_check_lists_a_mapping_whose_template_is_missing(self, tmp_path):
        port = free_port()
        templates = tmp_path / "templates.json"
        templates.write_text("[]")
        async with SandboxServer(SandboxConfig(port=port, templates_path=templates)):
            config = tmp_path / "c.toml"
            config.write_text(f'[whatsapp]\nbase_url = "http://127.0.0.1:{port}"\n'
                              '[sandbox]\nenabled = false\n')
            env = {"BRIDGE_DATA_DIR": str(tmp_path)}
            assert (await cli("db", "upgrade", env=env)).returncode == 0
            synced = await cli("templates", "sync", "--config", str(config), env=env)
            assert synced.returncode == 1
            assert "appointment_reminder" in synced.stdout and "missing" in synced.stdout


class TestPausedTemplate:
    async def test_a_paused_template_holds_its_reminders_until_reinstated(self, h):
        # Given Meta paused the Spanish reminder template
        await h.ingest(template_event("PAUSED"))
        await h.ingest(booked())
        # When the reminder falls due, it is held, not sent and not failed
        await h.later(timedelta(days=1, minutes=1))
        assert h.channel.sent == []
        async with h.db.read() as conn:
            state, attempts = (await conn.execute(
                select(outbox.c.state, outbox.c.attempts).where(outbox.c.kind == "reminder")
                .order_by(outbox.c.due_at))).first()
        assert (state, attempts) == ("pending", 0)
        # Then once reinstated it goes out
        await h.ingest(template_event("REINSTATED"))
        await h.later(timedelta(minutes=16))
        assert [n.content["name"] for n in h.channel.sent] == ["appointment_reminder"]
