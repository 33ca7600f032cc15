"""Doors of `bridge run`, from outside: the WhatsApp webhook and MLLP with kill -9 after ACK."""

from __future__ import annotations

import hashlib
import hmac
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from tests.e2e.daemon import free_port, running_daemon
from tests.e2e.test_loop_over_sockets import mllp_send, siu

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "whatsapp"
APP_SECRET = "e2e-app-secret-value"
VERIFY = "e2e-verify-token"


def signed(body: bytes, secret: str = APP_SECRET) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"x-hub-signature-256": f"sha256={digest}", "content-type": "application/json"}


class TestWhatsAppWebhookDoor:
    def test_challenge_echo_bad_signature_401_good_signature_200(self, tmp_path):
        env = {"BRIDGE_WHATSAPP_APP_SECRET": APP_SECRET, "BRIDGE_WHATSAPP_VERIFY_TOKEN": VERIFY}
        config = f'[sandbox]\nport = {free_port()}\n[whatsapp]\nbase_url = "http://127.0.0.1:1"\n'
        with running_daemon(tmp_path, config=config, env=env) as daemon:
            daemon.wait_ready()
            url = f"{daemon.url}/webhooks/whatsapp"
            challenge = httpx.get(url, params={"hub.mode": "subscribe", "hub.verify_token": VERIFY,
                                               "hub.challenge": "1158201444"})
            assert (challenge.status_code, challenge.text) == (200, "1158201444")
            wrong = httpx.get(url, params={"hub.mode": "subscribe", "hub.verify_token": "nope",
                                           "hub.challenge": "1"})
            assert wrong.status_code == 403
            body = (CORPUS / "webhook_status_delivered__pywa.json").read_bytes()
            assert httpx.post(url, content=body, headers=signed(body, "wrong")).status_code == 401
            unsigned = httpx.post(url, content=body, headers={"content-type": "application/json"})
            assert unsigned.status_code == 401
            assert httpx.post(url, content=body, headers=signed(body)).status_code == 200
            with sqlite3.connect(daemon.data_dir / "bridge.db") as conn:
                kept = conn.execute("SELECT count(*) FROM inbox WHERE connector = 'whatsapp'")
                assert kept.fetchone() == (1,)  # the 401s stored nothing


class TestMllpAckAfterCommit:
    def test_mllp_send_gets_aa_only_for_committed_rows_and_kill_9_loses_nothing(self, tmp_path):
        port = free_port()
        config = f'[bridge]\nchannel = ""\nconnectors = ["hl7v2"]\n[connectors.hl7v2]\nport = {port}\n'
        from datetime import UTC, datetime, timedelta

        start = datetime.now(UTC) + timedelta(days=5)
        with running_daemon(tmp_path, config=config) as daemon:
            daemon.wait_ready()
            db = daemon.data_dir / "bridge.db"
            # python-hl7's own client, a tool we did not write, sends a file of framed SIUs
            frames = tmp_path / "siu.hl7"
            frames.write_bytes(b"".join(siu(f"MS{i}", f"A{i}", start) for i in range(20)))
            mllp_send_bin = Path(sys.executable).with_name("mllp_send")
            result = subprocess.run([str(mllp_send_bin), "--port", str(port), "--file",
                                     str(frames), "127.0.0.1"], capture_output=True, text=True,
                                    timeout=60, check=False)
            assert result.returncode == 0, result.stderr
            assert result.stdout.count("MSA|AA|") == 20
            # each ACK is sent only once its row is visible to another connection
            for i in range(20, 40):
                ack = mllp_send(port, siu(f"MS{i}", f"A{i}", start))
                assert f"MSA|AA|MS{i}" in ack
                with sqlite3.connect(db) as conn:
                    found = conn.execute("SELECT count(*) FROM inbox WHERE source_id = ?",
                                         (f"MS{i}",)).fetchone()
                assert found == (1,)
            # kill -9 right after the last ACK
            os.kill(daemon.process.pid, signal.SIGKILL)
            daemon.process.wait(timeout=10)
        with sqlite3.connect(db) as conn:
            ids = {r[0] for r in conn.execute("SELECT source_id FROM inbox")}
            events = conn.execute("SELECT count(*) FROM event").fetchone()[0]
        assert ids == {f"MS{i}" for i in range(40)}
        assert events == 40


class TestWebhooksNoneLost:
    async def test_every_acknowledged_webhook_is_stored_under_concurrency(self, tmp_path):
        import asyncio
        import json

        env = {"BRIDGE_WHATSAPP_APP_SECRET": APP_SECRET}
        sandbox = free_port()
        config = (f'[sandbox]\nport = {sandbox}\n'
                  f'[whatsapp]\nbase_url = "http://127.0.0.1:{sandbox}"\n')

        def body(i: int) -> bytes:
            return json.dumps({"object": "whatsapp_business_account", "entry": [{
                "id": "1", "changes": [{"field": "messages", "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "1", "phone_number_id": "1"},
                    "statuses": [{"id": f"wamid.none-lost-{i}", "status": "delivered",
                                  "timestamp": "1700000000", "recipient_id": "1"}]}}]}]}).encode()

        with running_daemon(tmp_path, config=config, env=env) as daemon:
            daemon.wait_ready()
            acked: list[int] = []
            semaphore = asyncio.Semaphore(32)
            async with httpx.AsyncClient(timeout=30) as client:
                async def post(i: int) -> None:
                    raw = body(i)
                    async with semaphore:
                        answer = await client.post(f"{daemon.url}/webhooks/whatsapp",
                                                   content=raw, headers=signed(raw))
                    if answer.status_code == 200:
                        acked.append(i)

                await asyncio.gather(*(post(i) for i in range(300)))
            with sqlite3.connect(daemon.data_dir / "bridge.db") as conn:
                stored = {json.loads(r[0])["entry"][0]["changes"][0]["value"]["statuses"][0]["id"]
                          for r in conn.execute("SELECT payload FROM inbox")}
        assert len(acked) == 300
        assert {f"wamid.none-lost-{i}" for i in acked} <= stored
