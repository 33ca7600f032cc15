"""``bridge run`` as operators run it: health, metrics, clean stop, clear start-up failures."""

from __future__ import annotations

import signal
import time

import httpx

from tests.e2e.daemon import free_port, run_cli, running_daemon

NO_CHANNEL = '[bridge]\nchannel = ""\n'


class TestLifecycle:
    def test_run_answers_health_serves_metrics_and_exits_zero_within_5s_of_sigterm(self, tmp_path):
        with running_daemon(tmp_path, config=NO_CHANNEL) as daemon:
            daemon.wait_ready()
            assert httpx.get(f"{daemon.url}/healthz").json() == {"status": "alive"}
            ready = httpx.get(f"{daemon.url}/readyz").json()
            assert ready["ready"] is True and ready["checks"]["migrations"] == "ok"
            metrics = httpx.get(f"{daemon.url}/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "# TYPE bridge_outbox_rows gauge" in metrics.text
            assert 'bridge_outbox_rows{state="pending"} 0.0' in metrics.text
            started = time.monotonic()
            daemon.process.send_signal(signal.SIGTERM)
            daemon.process.wait(timeout=10)
            assert time.monotonic() - started < 5
            assert daemon.process.returncode == 0
            assert (daemon.data_dir / "bridge.db").exists()

    def test_unknown_path_is_404_json_and_counted(self, tmp_path):
        with running_daemon(tmp_path, config=NO_CHANNEL) as daemon:
            daemon.wait_ready()
            response = httpx.post(f"{daemon.url}/nope", content=b"x")
            assert (response.status_code, response.json()) == (404, {"error": "not_found"})
            too_big = httpx.post(f"{daemon.url}/healthz", content=b"x" * (4 * 1024 * 1024))
            assert too_big.status_code == 413
            metrics = httpx.get(f"{daemon.url}/metrics").text
            assert 'bridge_http_rejected_total{reason="not_found"} 1.0' in metrics
            assert 'bridge_http_rejected_total{reason="body_too_large"} 1.0' in metrics


class TestStartupFailures:
    def test_broken_config_exits_2_with_one_clear_message_and_no_traceback(self, tmp_path):
        path = tmp_path / "bad.toml"
        path.write_text("[http]\nport = 'eighty'\n")
        result = run_cli("run", "--config", str(path))
        assert result.returncode == 2
        assert "http.port" in result.stderr and "Traceback" not in result.stderr

    def test_unreachable_database_exits_3(self, tmp_path):
        port = free_port()  # nothing listens there
        result = run_cli("run", "--config", str(tmp_path / "c.toml"), env={
            "BRIDGE_DATABASE_URL": f"postgresql://bridge@127.0.0.1:{port}/bridge",
            "BRIDGE_DATA_DIR": str(tmp_path)}) if (tmp_path / "c.toml").write_text(NO_CHANNEL) else None
        assert result is not None
        assert result.returncode == 3
        assert "cannot connect" in result.stderr and "Traceback" not in result.stderr

    def test_unknown_connector_exits_4_naming_it(self, tmp_path):
        path = tmp_path / "c.toml"
        path.write_text('[bridge]\nchannel = ""\nconnectors = ["epic-magic"]\n')
        result = run_cli("run", "--config", str(path), env={"BRIDGE_DATA_DIR": str(tmp_path)})
        assert result.returncode == 4
        assert "epic-magic" in result.stderr and "not installed" in result.stderr

    def test_busy_http_port_exits_3(self, tmp_path):
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            path = tmp_path / "c.toml"
            path.write_text(NO_CHANNEL)
            result = run_cli("run", "--config", str(path), env={
                "BRIDGE_DATA_DIR": str(tmp_path), "BRIDGE_HTTP_PORT": str(port)})
        assert result.returncode == 3
        assert f":{port}" in result.stderr


class TestCommands:
    def test_db_upgrade_then_current_on_an_empty_sqlite(self, tmp_path):
        env = {"BRIDGE_DATA_DIR": str(tmp_path)}
        upgrade = run_cli("db", "upgrade", env=env)
        assert upgrade.returncode == 0, upgrade.stderr
        current = run_cli("db", "current", env=env)
        assert "up to date" in current.stdout

    def test_check_config_reports_every_problem_and_exits_2(self, tmp_path):
        path = tmp_path / "c.toml"
        path.write_text("[http]\nport = -1\n[relay]\nbatch_size = 0\n")
        result = run_cli("check-config", "--config", str(path))
        assert result.returncode == 2
        assert "http.port" in result.stderr and "relay.batch_size" in result.stderr


class TestSlowClients:
    def test_a_slow_body_gets_408_while_other_clients_are_served(self, tmp_path):
        import socket as sockets

        port = free_port()  # the webhook route reads bodies; its channel needs the sandbox
        config = (f"[http]\nbody_timeout_seconds = 1.0\n[sandbox]\nport = {port}\n"
                  f'[whatsapp]\nbase_url = "http://127.0.0.1:{port}"\n')
        with running_daemon(tmp_path, config=config) as daemon:
            daemon.wait_ready()
            with sockets.create_connection(("127.0.0.1", daemon.http_port), timeout=10) as slow:
                slow.sendall(b"POST /webhooks/whatsapp HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 1000\r\n\r\n{")
                # meanwhile another client is served at once
                started = time.monotonic()
                assert httpx.get(f"{daemon.url}/healthz").status_code == 200
                assert time.monotonic() - started < 0.5
                reply = slow.recv(4096)
            assert reply.startswith(b"HTTP/1.1 408")
            metrics = httpx.get(f"{daemon.url}/metrics").text
            assert 'bridge_http_rejected_total{reason="body_too_slow"} 1.0' in metrics
