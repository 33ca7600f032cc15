"""``bridge sandbox serve|reply|messages`` as hospital IT would use them."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner, Result

from bridge.sandbox import SandboxConfig, SandboxServer
from bridge.sandbox.cli import app

PHONE_ID = SandboxConfig().phone_number_id
PATIENT = "+573001234567"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _invoke(args: list[str]) -> Result:
    # The commands call asyncio.run, so they run in a worker thread, away from the test's loop.
    runner = CliRunner()
    return await asyncio.to_thread(lambda: runner.invoke(app, args))


class TestReplyCommand:
    async def test_reply_button_reaches_the_bridge_as_a_signed_tap(self, receiver, template_body):
        config = SandboxConfig(port=0, webhook_url=receiver.url, read_probability=0.0)
        async with SandboxServer(config) as server:
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": "Bearer sandbox-token"}
            ) as client:
                await client.post(
                    f"/v21.0/{PHONE_ID}/messages",
                    json=template_body(to=PATIENT, payloads={0: "tok-c", 1: "tok-r", 2: "tok-x"}),
                )

            result = await _invoke(
                ["reply", "--to", PATIENT, "--button", "confirm", "--sandbox-url", server.url]
            )
            await receiver.wait_for(lambda: len(receiver.messages()) == 1)

        assert result.exit_code == 0, result.output
        assert result.output.startswith("sent button reply wamid.")
        assert receiver.messages()[0]["button"]["payload"] == "tok-c"

    async def test_reply_text_and_messages_listing(self):
        async with SandboxServer(SandboxConfig(port=0)) as server:
            text = await _invoke(
                ["reply", "--to", PATIENT, "--text", "no puedo ir", "--sandbox-url", server.url]
            )
            listing = await _invoke(["messages", "--to", PATIENT, "--sandbox-url", server.url])

        assert text.exit_code == 0, text.output
        assert "sent text reply" in text.output
        assert listing.exit_code == 0
        assert listing.output.strip() == "[]"

    async def test_refused_reply_exits_1_with_the_reason(self):
        async with SandboxServer(SandboxConfig(port=0)) as server:
            result = await _invoke(
                ["reply", "--to", PATIENT, "--button", "confirm", "--sandbox-url", server.url]
            )

        assert result.exit_code == 1
        assert "no message with a button" in result.output

    def test_two_kinds_of_reply_exit_2(self):
        result = CliRunner().invoke(app, ["reply", "--to", PATIENT, "--button", "x", "--text", "y"])

        assert result.exit_code == 2

    def test_unreachable_sandbox_exits_3(self):
        url = f"http://127.0.0.1:{_free_port()}"

        result = CliRunner().invoke(
            app, ["reply", "--to", PATIENT, "--text", "hola", "--sandbox-url", url]
        )

        assert result.exit_code == 3
        assert "not reachable" in result.output


class TestServeCommand:
    def test_help_speaks_to_hospital_it(self):
        result = CliRunner().invoke(app, ["serve", "--help"])

        assert result.exit_code == 0
        assert "BRIDGE_WHATSAPP_APP_SECRET" in result.output
        assert "without a Meta account" in CliRunner().invoke(app, ["--help"]).output

    def test_unusable_template_file_exits_2(self, tmp_path):
        bad = tmp_path / "templates.json"
        bad.write_text("{nope")

        result = CliRunner().invoke(app, ["serve", "--templates", str(bad)])

        assert result.exit_code == 2
        assert "invalid templates" in result.output

    def test_serve_runs_until_stopped_with_the_token_from_the_environment(self):
        port = _free_port()
        env = dict(os.environ, BRIDGE_WHATSAPP_TOKEN="hospital-token")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from bridge.sandbox.cli import app; app()",
                "serve",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    stats = httpx.get(f"http://127.0.0.1:{port}/_sandbox/stats", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        pytest.fail("sandbox did not start")
                    time.sleep(0.1)
            url = f"http://127.0.0.1:{port}/v21.0/{SandboxConfig().waba_id}/message_templates"
            default_token = httpx.get(url, headers={"Authorization": "Bearer sandbox-token"})
            env_token = httpx.get(url, headers={"Authorization": "Bearer hospital-token"})
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)

        assert stats.status_code == 200
        assert default_token.status_code == 401
        assert env_token.status_code == 200
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why.
        assert proc.returncode in (0, -signal.SIGTERM)
        assert b"Traceback" not in err
        assert b"hospital-token" not in err
