"""The README's "Installing on a server" steps work on a fresh machine (issue #8).

The ```sh block under that heading is read from README.md and run, line by line and in order,
by one bash, so the README and this test cannot drift. Only mechanical substitutions keep it
from changing the machine for good:

* the absolute paths it installs to (/opt/bridge, /etc/bridge, /etc/systemd/system,
  /var/lib/bridge) move under a temporary root, and any other absolute path fails the test
  before anything runs;
* the system user ``bridge`` (and so its PostgreSQL role and database) becomes a throwaway name,
  created by the README's own ``useradd`` line and removed at the end;
* ``$TOKEN``, ``$APPSECRET`` and ``$VERIFY`` get synthetic values;
* "then edit it" is done the way an operator would: the Graph ids and the database name;
* the ``systemctl`` line cannot run (no systemd as PID 1), so the README's by-hand start line
  runs instead, on free ports, and the daemon must answer as the throwaway user, with the
  secrets it read from the credential files, then stop cleanly on SIGTERM.

It runs as root only (useradd, runuser, a local PostgreSQL reached as ``postgres``), as CI does.
The temporary root is not pytest's ``tmp_path``: that sits in a 0700 directory the throwaway
user could not traverse to reach its venv.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import find_phi
from tests.e2e.daemon import free_port

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
SHIPPED_CONFIG = REPO / "deploy" / "etc-bridge" / "bridge.toml"
#: The paths the block installs to; each moves under the temporary root.
MAPPED_PATHS = ("/opt/bridge", "/etc/bridge", "/etc/systemd/system", "/var/lib/bridge")
#: Directories a fresh Debian host with systemd already has, made under the root first.
FRESH_MACHINE_DIRS = ("opt", "etc/systemd/system", "var/lib")
#: Absolute paths the block may use as they are: they are read, never written.
UNMAPPED_PATHS = ("/usr/sbin/nologin", "/dev/")
#: A fresh root shell's PATH: no pyenv, no venv, so ``python3`` is the distribution's.
FRESH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The synthetic Graph token of the PHI scan: were the daemon to log it, the scan would say so.
TOKEN = "EAAGm0PX4ZCpsBAExampleToken"
#: Room for the wheel build and the dependency install from PyPI (pip's cache makes it ~40 s).
INSTALL_TIMEOUT = 170.0
#: What the checkout copy leaves out: local state, caches and build output, as .gitignore does.
NOT_IN_CHECKOUT = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.pyc",
    "*.egg-info",
    ".bridge",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    ".coverage",
    "build",
    "dist",
    "out",
)

_USER_NAME = re.compile(r"(?<![\w./-])bridge(?![\w./-])")
_MAPPED = re.compile(r"(?<![\w./-])(" + "|".join(map(re.escape, MAPPED_PATHS)) + r")(?![\w.-])")
_ABSOLUTE = re.compile(r"(?<![\w.:/-])/[\w.-][\w./-]*")


def readme_install_block() -> list[str]:
    """The lines of the ```sh block under "## Installing on a server", as written."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Installing on a server\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"^```sh\n(.*?)^```$", section, re.DOTALL | re.MULTILINE)
    assert match, "README's 'Installing on a server' section has no ```sh block"
    return match.group(1).splitlines()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the README's install steps create a system user (CI runs as root)"
    missing = [
        tool
        for tool in ("bash", "useradd", "userdel", "runuser", "createuser", "dropdb")
        if shutil.which(tool, path=FRESH_PATH) is None
    ]
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        missing.append("the postgres system user (a local PostgreSQL)")
    if missing:
        reason = f"the README's install steps need {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        return reason
    return None


@dataclass
class Site:
    """The throwaway install: a root standing in for ``/``, a user standing in for ``bridge``."""

    root: Path
    user: str

    @property
    def checkout(self) -> Path:
        return self.root / "checkout"

    def map_line(self, line: str) -> str:
        """One README line with the user renamed and the installed paths under the root."""
        return self.map_paths(_USER_NAME.sub(self.user, line))

    def map_paths(self, text: str) -> str:
        """``text`` with the installed paths under the root."""
        return _MAPPED.sub(lambda m: f"{self.root}{m.group(1)}", text)

    def uid(self) -> int | None:
        try:
            return pwd.getpwnam(self.user).pw_uid
        except KeyError:
            return None

    def processes(self) -> list[int]:
        """Every process the throwaway user runs (only this test's, the user is unique)."""
        uid = self.uid()
        if uid is None:
            return []
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if _ids(int(entry.name))["Uid"][0] == uid:
                        found.append(int(entry.name))
                except (FileNotFoundError, ProcessLookupError):
                    continue
        return found


def _run_quietly(*args: str) -> None:
    subprocess.run(
        list(args), capture_output=True, check=False, timeout=60, env={"PATH": FRESH_PATH}
    )


@pytest.fixture(name="site")
def _site() -> Iterator[Site]:
    """A temporary root and a unique user name; removes user, role, database, files after."""
    if reason := _skip_reason():
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="readme-install-"))
    root.chmod(0o755)
    site = Site(root=root, user=f"brinst{uuid.uuid4().hex[:10]}")
    shutil.copytree(REPO, site.checkout, ignore=NOT_IN_CHECKOUT)
    for present in FRESH_MACHINE_DIRS:  # what a fresh Debian has before the README's steps
        (root / present).mkdir(mode=0o755, parents=True)
    try:
        yield site
    finally:
        for pid in site.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _run_quietly(
            "runuser", "-u", "postgres", "--", "dropdb", "--if-exists", "--force", site.user
        )
        _run_quietly("runuser", "-u", "postgres", "--", "dropuser", "--if-exists", site.user)
        _run_quietly("userdel", site.user)
        _run_quietly("groupdel", site.user)  # userdel keeps it when USERGROUPS_ENAB is off
        shutil.rmtree(root, ignore_errors=True)
        assert site.uid() is None, f"throwaway user {site.user} left behind"


def install_script(site: Site, lines: list[str], *, verify: str, app_secret: str) -> str:
    """The README block as one bash script that ends by exec-ing the by-hand start line."""
    systemctl = [line for line in lines if line.startswith("systemctl ")]
    start = [line for line in lines if re.match(r"#.*\bbridge run\b", line)]
    assert len(systemctl) == 1, "README block: expected one systemctl line"
    assert len(start) == 1, "README block: expected one commented by-hand 'bridge run' line"
    for secret in ("$TOKEN", "$APPSECRET", "$VERIFY"):
        assert any(secret in line for line in lines), f"README block no longer uses {secret}"

    script = [
        "set -uo pipefail",
        f"cd {shlex.quote(str(site.checkout))}",
        f"TOKEN={shlex.quote(TOKEN)} APPSECRET={shlex.quote(app_secret)} VERIFY={verify}",
    ]
    edited = False
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#") or line in systemctl:
            continue
        mapped = site.map_line(line)
        for path in _ABSOLUTE.findall(mapped.split(" #", 1)[0]):
            assert path.startswith((str(site.root), *UNMAPPED_PATHS)), (
                f"README install line {number} uses {path}: map it in this test or the step "
                f"would change the machine for good"
            )
        script += [
            f"echo {shlex.quote(f'>>> README install line {number}: {line}')}",
            mapped,
            f'rc=$?; [ "$rc" -eq 0 ] || {{ echo ">>> line {number} failed ($rc)"; exit "$rc"; }}',
        ]
        if "then edit it" in line:
            script.append(_edit_config(site))
            edited = True
    assert edited, "README block: the config install line ('# then edit it') is gone"
    by_hand = site.map_line(start[0].lstrip("#").strip())
    script += [f"echo {shlex.quote('>>> by-hand start: ' + start[0])}", f"exec {by_hand}"]
    return "\n".join(script) + "\n"


def _edit_config(site: Site) -> str:
    """What the operator edits in the shipped config: Graph ids, and our role/database name."""
    shipped = SHIPPED_CONFIG.read_text(encoding="utf-8")
    edits = {
        "REPLACE-WITH-PHONE-NUMBER-ID": "100000000000001",
        "REPLACE-WITH-WABA-ID": "200000000000002",
        "postgresql://bridge@/bridge": f"postgresql://{site.user}@/{site.user}",
    }
    for placeholder in edits:
        assert placeholder in shipped, f"deploy/etc-bridge/bridge.toml no longer has {placeholder}"
    expressions = " ".join(f"-e {shlex.quote(f's|{old}|{new}|')}" for old, new in edits.items())
    return f"sed -i {expressions} {shlex.quote(str(site.root / 'etc/bridge/bridge.toml'))}"


def _ids(pid: int) -> dict[str, list[int]]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        key: [int(v) for v in rest.split()]
        for key, rest in (line.split(":", 1) for line in status.splitlines())
        if key in ("Uid", "Gid")
    }


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + INSTALL_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"install or daemon exited {process.returncode}:\n{log.read_text()[-4000:]}"
            )
        try:
            if all(
                httpx.get(f"{url}{path}", timeout=1).status_code == 200
                for path in ("/healthz", "/readyz")
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not ready within {INSTALL_TIMEOUT:.0f} s:\n{log.read_text()[-4000:]}")


def test_readme_install_steps_start_the_daemon_as_the_service_user(site: Site) -> None:
    verify = f"verify-{uuid.uuid4().hex}"
    script = install_script(
        site, readme_install_block(), verify=verify, app_secret=f"appsecret-{uuid.uuid4().hex}"
    )
    http_port, mllp_port = free_port(), free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BRIDGE_") and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    }
    env.update(
        {"PATH": FRESH_PATH, "BRIDGE_HTTP_PORT": str(http_port), "BRIDGE_MLLP_PORT": str(mllp_port)}
    )
    log = site.root / "install.log"
    url = f"http://127.0.0.1:{http_port}"
    with log.open("wb") as out:
        # Its own session, so a failure kills the install's whole process group (pip and all).
        process = subprocess.Popen(
            ["bash", "-c", script],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(url, process, log)

            uid = site.uid()
            assert uid is not None and uid != 0
            daemons = site.processes()
            assert len(daemons) == 1, f"expected one daemon process as {site.user}: {daemons}"
            ids = _ids(daemons[0])
            assert ids["Uid"] == [uid] * 4, ids
            assert ids["Gid"] == [pwd.getpwnam(site.user).pw_gid] * 4, ids

            # The verify token came from the credential file the README wrote.
            challenge = uuid.uuid4().hex
            params = {"hub.mode": "subscribe", "hub.challenge": challenge}
            answer = httpx.get(
                f"{url}/webhooks/whatsapp", params={**params, "hub.verify_token": verify}, timeout=5
            )
            assert (answer.status_code, answer.text) == (200, challenge)
            wrong = httpx.get(
                f"{url}/webhooks/whatsapp",
                params={**params, "hub.verify_token": "not-" + verify},
                timeout=5,
            )
            assert wrong.status_code == 403

            os.kill(daemons[0], signal.SIGTERM)
            assert process.wait(timeout=30) == 0, log.read_text()[-4000:]
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    text = log.read_text()
    assert site.processes() == [], "the daemon outlived its SIGTERM"
    assert "bridge.stopped" in text, text[-4000:]
    assert find_phi(text) == [], "the install or the daemon logged a synthetic secret"
    _check_installed_files(site)
    _verify_installed_unit(site)


def _check_installed_files(site: Site) -> None:
    """Secrets readable by the service's group only; state owned by the service user."""
    uid, gid = pwd.getpwnam(site.user).pw_uid, pwd.getpwnam(site.user).pw_gid
    credentials = sorted((site.root / "etc/bridge/credentials").iterdir())
    assert {"whatsapp-app-secret", "whatsapp-token", "whatsapp-verify-token"} <= {
        p.name for p in credentials
    }
    for path in credentials:
        info = path.stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, gid, 0o640), path.name
    assert (site.root / "etc/bridge/credentials/whatsapp-token").read_text() == TOKEN
    state = (site.root / "var/lib/bridge").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (uid, 0o750)


def _verify_installed_unit(site: Site) -> None:
    """The unit as installed, its paths under the root, passes ``systemd-analyze verify``."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # tests/e2e/test_systemd.py fails on that already
        return
    installed = site.root / "etc/systemd/system/bridge.service"
    unit = site.root / "verify" / "bridge.service"
    unit.parent.mkdir()
    unit.write_text(site.map_paths(installed.read_text()))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if "bridge.service" in line]
    assert result.returncode == 0 and problems == [], result.stderr
