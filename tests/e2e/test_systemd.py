"""The on-prem install: the systemd unit verifies, and the daemon speaks sd_notify."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.e2e.daemon import running_daemon

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "bridge.service"


class TestSystemdUnit:
    def test_unit_passes_systemd_analyze_verify(self, tmp_path):
        """The unit as shipped, with the venv's bridge standing in for /opt/bridge/venv."""
        analyze = shutil.which("systemd-analyze")
        assert analyze, "systemd-analyze missing: .ci/run installs Debian's systemd package"
        bridge = Path(sys.executable).with_name("bridge")
        unit = tmp_path / "bridge.service"
        unit.write_text(UNIT.read_text().replace("/opt/bridge/venv/bin/bridge", str(bridge)))
        result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                                check=False)
        problems = [line for line in result.stderr.splitlines()
                    if "bridge.service" in line and "Documentation" not in line]
        assert result.returncode == 0 and problems == [], result.stderr

    def test_unit_runs_unprivileged_with_a_read_only_system(self):
        text = UNIT.read_text()
        for setting in ("User=bridge", "ProtectSystem=strict", "NoNewPrivileges=yes",
                        "StateDirectory=bridge", "LoadCredential=", "Restart=on-failure",
                        "Type=notify"):
            assert setting in text


class TestNotify:
    def test_daemon_reports_ready_and_stopping_to_systemd(self, tmp_path):
        path = str(tmp_path / "notify.sock")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
            listener.bind(path)
            listener.settimeout(30)
            with running_daemon(tmp_path, config='[bridge]\nchannel = ""\n',
                                env={"NOTIFY_SOCKET": path}) as daemon:
                assert listener.recv(64) == b"READY=1"
                daemon.process.send_signal(signal.SIGTERM)
                assert listener.recv(64) == b"STOPPING=1"
                assert daemon.process.wait(timeout=10) == 0
