"""The admin door of `bridge run`: no, wrong and right credentials; roles; audit by token name."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from tests.e2e.daemon import run_cli, running_daemon

READ = "viewer-token-0123456789"
OPERATE = "operator-token-0123456789"
CONFIG = '[bridge]\nchannel = ""\n[http]\nmetrics_require_token = true\n'
ENV = {"BRIDGE_ADMIN_TOKENS": f"dash:read:{READ},nurse-lead:operator:{OPERATE}"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(name="daemon", scope="module")
def _daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("admin")
    with running_daemon(tmp, config=CONFIG, env=ENV) as daemon:
        daemon.wait_ready()
        yield daemon


class TestAdminDoor:
    @pytest.mark.parametrize(("headers", "status"), [
        ({}, 401),
        ({"authorization": "Basic dXNlcjpwYXNz"}, 401),
        ({"authorization": "Bearer"}, 401),
        (bearer("not-the-token-at-all"), 401),
        (bearer(READ), 200),
        (bearer(OPERATE), 200),
    ], ids=["none", "basic", "empty", "wrong", "read", "operator"])
    def test_status_needs_a_valid_token(self, daemon, headers, status):
        response = httpx.get(f"{daemon.url}/admin/status", headers=headers)
        assert response.status_code == status
        if status == 401:
            assert response.headers["www-authenticate"] == "Bearer"

    def test_metrics_need_a_token_when_configured_and_health_stays_open(self, daemon):
        assert httpx.get(f"{daemon.url}/metrics").status_code == 401
        assert httpx.get(f"{daemon.url}/metrics", headers=bearer(READ)).status_code == 200
        assert httpx.get(f"{daemon.url}/healthz").status_code == 200

    def test_read_only_tokens_cannot_act(self, daemon):
        response = httpx.post(f"{daemon.url}/admin/outbox/1/retry", headers=bearer(READ))
        assert response.status_code == 403

    def test_operator_action_is_audited_with_the_token_name(self, daemon):
        response = httpx.post(f"{daemon.url}/admin/handoff/%2B573001230001/release",
                              headers=bearer(OPERATE))
        assert response.status_code == 200
        missing = httpx.post(f"{daemon.url}/admin/outbox/999999/retry", headers=bearer(OPERATE))
        assert missing.status_code == 404
        verify = run_cli("audit", "verify", env={"BRIDGE_DATA_DIR": str(daemon.data_dir)})
        assert verify.returncode == 0
        with sqlite3.connect(daemon.data_dir / "bridge.db") as conn:
            rows = conn.execute("SELECT actor, action FROM audit").fetchall()
        assert ("admin:nurse-lead", "handoff.release") in rows
        assert not any(OPERATE in actor for actor, _ in rows)


class TestTokenConfig:
    def test_malformed_tokens_are_a_config_error_that_never_shows_the_token(self, tmp_path):
        result = run_cli("check-config", env={"BRIDGE_ADMIN_TOKENS": "x:superuser:short-secret",
                                              "BRIDGE_DATA_DIR": str(tmp_path)})
        assert result.returncode == 2
        assert "BRIDGE_ADMIN_TOKENS entry 1" in result.stderr
        assert "short-secret" not in result.stderr
