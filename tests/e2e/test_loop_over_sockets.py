"""The whole loop over real sockets: `bridge run` with the HL7 connector and the embedded sandbox.

SIU^S12 over MLLP → reminder template at the sandbox (statuses back by signed webhook) → the
simulated patient taps Confirm → SRM^S03 reaches a listening test HIS over MLLP with the
appointment id; then the patient opts out and a new booking sends nothing.
"""

from __future__ import annotations

import socket
import sqlite3
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.e2e.daemon import free_port, running_daemon
from tests.faults._harness import FakeHis

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
PHONE = "+573001230777"


def siu(control: str, appointment: str, start: datetime, phone: str = PHONE) -> bytes:
    ts = start.strftime("%Y%m%d%H%M%S")
    end = (start + timedelta(minutes=30)).strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|TESTHIS|CLINIC|BRIDGE|CLINIC|20261122080000||SIU^S12^SIU_S12|{control}|P|2.5",
        (f"SCH|{appointment}^HIS|{appointment}^HIS|||||ROUTINE||30|MIN|^^30^{ts}^{end}"
         "|||||||||||||Booked"),
        f"TQ1|1||||||{ts}|{end}",
        f"PID|1||MRN77^^^HIS^MR||PRUEBA^ANA||19800101|F|||||^PRN^CP^^^^^^^^^{phone}|||es",
        "RGS|1|A",
        f"AIL|1|A|SEDE^^^CLINIC^^^^^Sede Norte|||{ts}|||30|MIN",
    ]
    return VT + "\r".join(segments).encode() + CR + FS + CR


def mllp_send(port: int, frame: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(frame)
        reply = b""
        while not reply.endswith(FS + CR):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.decode()


def at_sandbox(sandbox: str) -> list[dict]:
    """What the bridge sent to the patient's phone, oldest first."""
    return httpx.get(f"{sandbox}/_sandbox/messages", params={"to": PHONE}).json()["data"]


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(name="his")
def _his():
    with FakeHis() as his:
        yield his


class TestLoopOverSockets:
    def test_booking_reminder_confirm_reaches_the_his_and_opt_out_silences(self, tmp_path, his):
        mllp_port, sandbox_port = free_port(), free_port()
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
        with running_daemon(tmp_path, config=config) as daemon:
            daemon.wait_ready()
            sandbox = f"http://127.0.0.1:{sandbox_port}"
            start = datetime.now(UTC) + timedelta(days=2)
            # Given the HIS books an appointment: AA only once it is stored
            ack = mllp_send(mllp_port, siu("CTRL1", "APPT-4711", start))
            assert "MSA|AA|CTRL1" in ack
            # Then the reminder template reaches the patient's phone at the sandbox
            sent = wait_for(lambda: [m for m in at_sandbox(sandbox) if m["template"]
                                     and m["template"]["name"] == "appointment_reminder"],
                            what="the reminder at the sandbox")
            assert len(sent) == 1
            # and its statuses come back by signed webhook and are matched to the row
            db = daemon.data_dir / "bridge.db"

            def reminder_status():
                with sqlite3.connect(db) as conn:
                    return conn.execute("SELECT delivery_status FROM outbox WHERE kind = "
                                        "'reminder' AND delivery_status = 'read'").fetchall()

            wait_for(reminder_status, what="the reminder's read status")
            # When the patient taps Confirm
            tapped = httpx.post(f"{sandbox}/_sandbox/reply", json={"to": PHONE,
                                                                  "button": "confirm"})
            assert tapped.status_code == 200, tapped.text
            # Then the HIS receives the confirmation for that appointment
            srm = wait_for(lambda: [m for m in his.messages if "SRM^S03" in m],
                           what="SRM^S03 at the HIS")
            assert "APPT-4711" in srm[0]
            # and the patient is told
            wait_for(lambda: [m for m in at_sandbox(sandbox) if m["type"] == "text"],
                     what="the confirmation text")
            # When the patient opts out, a new booking sends them nothing
            httpx.post(f"{sandbox}/_sandbox/reply", json={"to": PHONE, "text": "STOP"})
            wait_for(lambda: len(at_sandbox(sandbox)) >= 3, what="the opt-out acknowledgement")
            before = len(at_sandbox(sandbox))
            soon = datetime.now(UTC) + timedelta(hours=40)  # its 72 h reminder is due at once
            assert "MSA|AA" in mllp_send(mllp_port, siu("CTRL2", "APPT-4712", soon))

            def skipped():
                with sqlite3.connect(db) as conn:
                    return conn.execute(
                        "SELECT state, last_error FROM outbox WHERE kind = 'reminder' AND "
                        "subject_key LIKE '%APPT-4712' AND state != 'pending'").fetchall()

            assert wait_for(skipped, what="the new reminder's turn") == [("cancelled",
                                                                           "opted_out")]
            assert len(at_sandbox(sandbox)) == before
