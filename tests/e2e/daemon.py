"""Start ``bridge run`` as a real subprocess on free ports, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bridge_command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from bridge.cli import main; main()", *args]


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
    """Run one ``bridge`` command; its stderr (logs, errors) must carry no synthetic PHI."""
    from tests.conftest import find_phi

    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    full_env.update(env or {})
    result = subprocess.run(bridge_command(*args), env=full_env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    leaked = find_phi(result.stderr)
    assert not leaked, f"bridge {args[0]} logged synthetic PHI: {[v[:4] for v in leaked]}"
    return result


class Daemon:
    """A running ``bridge run`` process and its HTTP base URL."""

    def __init__(self, process: subprocess.Popen[str], http_port: int, data_dir: Path) -> None:
        self.process = process
        self.http_port = http_port
        self.data_dir = data_dir
        self.url = f"http://127.0.0.1:{http_port}"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (self.data_dir.parent / "daemon.log").read_text()
                raise AssertionError(f"daemon exited {self.process.returncode}: {err[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("daemon not ready in time")


@contextmanager
def running_daemon(tmp_path: Path, *, config: str | None = None,
                   env: Mapping[str, str] | None = None) -> Iterator[Daemon]:
    """Run ``bridge run`` with its data dir in ``tmp_path``; SIGKILL it if the test leaves it up."""
    http_port = free_port()
    args = ["run"]
    if config is not None:
        path = tmp_path / "bridge.toml"
        path.write_text(config, encoding="utf-8")
        args += ["--config", str(path)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    full_env.update({"BRIDGE_DATA_DIR": str(tmp_path / "data"),
                     "BRIDGE_HTTP_PORT": str(http_port), "BRIDGE_LOG_FORMAT": "json"})
    full_env.update(env or {})
    # Logs go to a file, not a pipe: a pipe nobody reads fills up and blocks the daemon.
    log_path = tmp_path / "daemon.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(bridge_command(*args), env=full_env, stdout=log_file,
                               stderr=subprocess.STDOUT, text=True)
    daemon = Daemon(process, http_port, tmp_path / "data")
    try:
        yield daemon
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        log_file.close()
        stderr = log_path.read_text()
        from tests.conftest import find_phi

        leaked = find_phi(stderr)
        assert not leaked, f"the daemon logged synthetic PHI: {[v[:4] for v in leaked]}"
