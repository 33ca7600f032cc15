"""Encryption at rest, end to end: `bridge run` with BRIDGE_DATA_KEY over real sockets.

SIU^S12 over MLLP → reminder at the sandbox → the simulated patient taps Confirm → SRM^S03 at a
listening test HIS → the patient is told; then the daemon stops and the SQLite files (database,
WAL, shared memory) are read byte by byte: no phone number or name of the patient is in them.
A second start without the key, or with another one, is refused with exit 2.
"""

from __future__ import annotations

import signal
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from bridge.store.sealing import DataCipher, generate_key, parse_key
from tests.e2e.daemon import free_port, run_cli, running_daemon
from tests.e2e.test_loop_over_sockets import mllp_send, wait_for
from tests.faults._harness import FakeHis

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
PHONE = "+573001230777"
#: the phone's digits in any formatting, the names in UTF-8 and as JSON escapes
NEEDLES = (b"3001230777", "Ana María".encode(), b"Ana Mar", "Ríos".encode(), b"R\\u00edos")


def siu(control: str, appointment: str, start: datetime) -> bytes:
    ts = start.strftime("%Y%m%d%H%M%S")
    end = (start + timedelta(minutes=30)).strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|TESTHIS|CLINIC|BRIDGE|CLINIC|20261122080000||SIU^S12^SIU_S12|{control}|P|2.5",
        (
            f"SCH|{appointment}^HIS|{appointment}^HIS|||||ROUTINE||30|MIN|^^30^{ts}^{end}"
            "|||||||||||||Booked"
        ),
        f"TQ1|1||||||{ts}|{end}",
        f"PID|1||MRN77^^^HIS^MR||Ríos^Ana María||19800101|F|||||^PRN^CP^^^^^^^^^{PHONE}|||es",
        "RGS|1|A",
        f"AIL|1|A|SEDE^^^CLINIC^^^^^Sede Norte|||{ts}|||30|MIN",
    ]
    return VT + "\r".join(segments).encode() + CR + FS + CR


@pytest.fixture(name="his")
def _his():
    with FakeHis() as his:
        yield his


def at_sandbox(sandbox: str) -> list[dict]:
    return httpx.get(f"{sandbox}/_sandbox/messages", params={"to": PHONE}).json()["data"]


class TestSealedDaemon:
    def test_the_loop_completes_and_the_database_files_hold_no_phone_or_name(self, tmp_path, his):
        mllp_port, sandbox_port = free_port(), free_port()
        key = generate_key()
        config = f"""
[bridge]
timezone = "America/Bogota"
connectors = ["hl7v2"]
[engine]
jitter_minutes = 0
quiet_hours_start = "00:00"
quiet_hours_end = "00:00"
[sandbox]
port = {sandbox_port}
[whatsapp]
base_url = "http://127.0.0.1:{sandbox_port}"
[connectors.hl7v2]
port = {mllp_port}
timezone = "America/Bogota"
phone_region = "CO"
[connectors.hl7v2.outbound]
host = "127.0.0.1"
port = {his.port}
"""
        with running_daemon(tmp_path, config=config, env={"BRIDGE_DATA_KEY": key}) as daemon:
            daemon.wait_ready()
            sandbox = f"http://127.0.0.1:{sandbox_port}"
            # Given the HIS books an appointment
            start = datetime.now(UTC) + timedelta(days=2)
            assert "MSA|AA|CTRL1" in mllp_send(mllp_port, siu("CTRL1", "APPT-4711", start))
            # Then the reminder reaches the patient's phone: the sealed phone was opened to send
            reminder = wait_for(
                lambda: [m for m in at_sandbox(sandbox) if m["template"]],
                what="the reminder at the sandbox",
            )
            assert reminder[0]["template"]["name"] == "appointment_reminder"
            # When the patient taps Confirm, the reply is matched to the row by the keyed hash
            tapped = httpx.post(
                f"{sandbox}/_sandbox/reply", json={"to": PHONE, "button": "confirm"}
            )
            assert tapped.status_code == 200, tapped.text
            srm = wait_for(
                lambda: [m for m in his.messages if "SRM^S03" in m], what="SRM^S03 at the HIS"
            )
            assert "APPT-4711" in srm[0]
            wait_for(
                lambda: [m for m in at_sandbox(sandbox) if m["type"] == "text"],
                what="the confirmation text",
            )
            # and the daemon stops cleanly
            daemon.process.send_signal(signal.SIGTERM)
            assert daemon.process.wait(timeout=30) == 0

        files = sorted(p for p in daemon.data_dir.rglob("*") if p.is_file())
        assert any(p.name == "bridge.db" for p in files)
        for path in files:
            data = path.read_bytes()
            leaked = [n for n in NEEDLES if n in data]
            assert not leaked, f"{path.name} holds patient data in clear ({len(leaked)} kinds)"
        # the patient's rows are there, found by the keyed hash of the phone
        hashed = DataCipher(parse_key(key)).lookup(PHONE).encode()
        assert any(hashed in path.read_bytes() for path in files)

        # A start without the key, or with another key, is refused before anything runs
        env = {"BRIDGE_DATA_DIR": str(daemon.data_dir)}
        config_path = str(tmp_path / "bridge.toml")
        for extra in ({}, {"BRIDGE_DATA_KEY": generate_key()}):
            checked = run_cli("check-config", "--config", config_path, env={**env, **extra})
            assert checked.returncode == 2, checked.stderr
            assert "BRIDGE_DATA_KEY" in checked.stderr
            refused = run_cli("run", "--config", config_path, env={**env, **extra}, timeout=60)
            assert refused.returncode == 2, refused.stderr
            assert "BRIDGE_DATA_KEY" in refused.stderr
        # and with its key the operator's commands work on it
        listed = run_cli("handoff", "list", env={**env, "BRIDGE_DATA_KEY": key})
        assert listed.returncode == 0, listed.stderr
        ok = run_cli("check-config", "--config", config_path, env={**env, "BRIDGE_DATA_KEY": key})
        assert ok.returncode == 0, ok.stderr
        assert "sealed with the configured key" in " ".join(ok.stdout.split())


class TestDbSealCommand:
    def test_seal_converts_a_plain_database_once_and_leaves_no_trace_in_the_file(self, tmp_path):
        import asyncio

        from bridge.ports import SystemClock
        from bridge.store import Database
        from bridge.store.consent import ConsentLedger
        from bridge.store.conversations import Conversations

        env = {"BRIDGE_DATA_DIR": str(tmp_path)}
        assert run_cli("db", "upgrade", env=env).returncode == 0

        async def plain_rows() -> None:  # what a plain daemon would have written
            db = Database(f"sqlite:///{tmp_path}/bridge.db")
            clock = SystemClock()
            await ConsentLedger(db, clock).record(
                PHONE, "opt_out", source="whatsapp", evidence="wamid.1"
            )
            await Conversations(db, clock).hand_off(PHONE, "patient_asked")
            await db.dispose()

        asyncio.run(plain_rows())
        assert b"3001230777" in (tmp_path / "bridge.db").read_bytes() + b"".join(
            p.read_bytes() for p in tmp_path.glob("bridge.db-wal")
        )
        # Without a key there is nothing to seal with
        refused = run_cli("db", "seal", env=env)
        assert refused.returncode == 2 and "BRIDGE_DATA_KEY" in refused.stderr
        # With one, the rows are converted and counted, once
        keygen = run_cli("db", "keygen")
        key = keygen.stdout.strip()
        assert keygen.returncode == 0 and len(parse_key(key)) == 32
        keyed = {**env, "BRIDGE_DATA_KEY": key}
        sealed = run_cli("db", "seal", env=keyed)
        assert sealed.returncode == 0, sealed.stderr
        assert "sealed 2 row(s)" in sealed.stdout and "consent 1" in sealed.stdout
        again = run_cli("db", "seal", env=keyed)
        assert again.returncode == 0 and "sealed 0 row(s)" in again.stdout
        # and the phone is gone from the files, free pages and WAL included
        for path in tmp_path.glob("bridge.db*"):
            assert b"3001230777" not in path.read_bytes(), path.name
        # while the operator still gets it back with the key
        exported = run_cli("consent", "export", env=keyed)
        assert exported.returncode == 0 and PHONE in exported.stdout
        listed = run_cli("handoff", "list", env=keyed)
        assert PHONE in listed.stdout
        assert run_cli("consent", "export", env=env).returncode == 2
