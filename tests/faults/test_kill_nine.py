"""kill -9 under mixed load (issue 7): nothing acknowledged is lost, nothing is written twice.

A real ``bridge run`` on SQLite takes SIU^S12 bookings over MLLP from its own client thread,
sends reminders to a WhatsApp sandbox running as a separate process (so it outlives the
daemon), takes the sandbox's status webhooks and patients' Confirm taps, and writes SRM^S03
confirmations to a listening HIS. The daemon is killed with SIGKILL at random moments and
restarted on the same data dir and ports each time.

The CI version kills 3 times; the ``slow`` soak kills 10 times with more traffic. A second,
deterministic test kills the daemon at the one moment a random kill rarely hits for EHR writes:
after the HIS applied a decision, before the daemon heard its ACK.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.daemon import free_port
from tests.faults._harness import (
    BridgeDaemon,
    FakeHis,
    MllpClient,
    SandboxProcess,
    ack_code,
    bridge_config,
    daemon_running,
    make_daemon,
    phone,
    run_seed,
    siu,
    sqlite_rows,
    wait_for,
)

REMINDER = "appointment_reminder"


@dataclass(frozen=True)
class Soak:
    """One kill -9 scenario."""

    name: str
    kills: int
    bookings_per_second: float
    min_gap: float
    max_gap: float


@dataclass
class HisSender:
    """The HIS's outbound interface: books appointments one after another over MLLP, resending
    a message until it gets AA (what a real interface engine does when an ACK does not come)."""

    port: int
    start: datetime
    rate: float
    acked: list[str] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    failure: list[str] = field(default_factory=list)

    def run(self) -> None:
        client = MllpClient(self.port, timeout=5)
        index = 0
        try:
            while not self.stop.is_set():
                control, appointment = f"K{index:05d}", f"A{index:05d}"
                frame = siu(control, appointment, self.start, phone(index))
                while True:  # until acknowledged: the daemon may be dead for a while
                    code = ack_code(client.send(frame))
                    self.answers[code or "none"] += 1
                    if code == "AA":
                        self.acked.append(control)
                        break
                    if code not in (None, "AE"):
                        self.failure.append(f"{control}: {code}")
                        return
                    time.sleep(0.2)
                index += 1
                time.sleep(1 / self.rate)
        finally:
            client.close()


@dataclass
class Patients:
    """Every patient taps Confirm on their reminder; taps again when nothing came of it."""

    sandbox: SandboxProcess
    his: FakeHis
    retap_after: float = 8.0
    tapped: dict[str, float] = field(default_factory=dict)
    taps: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            confirmed = self.his.confirmations()
            for message in self.sandbox.messages():
                template = message.get("template") or {}
                if template.get("name") != REMINDER:
                    continue
                to = message["to"]
                appointment = f"A{int(to[-4:]):05d}"
                last = self.tapped.get(to)
                if confirmed[appointment] or (last and time.monotonic() - last < self.retap_after):
                    continue
                if self.sandbox.reply(to, button="confirm", context_id=message["id"]) == 200:
                    self.tapped[to] = time.monotonic()
                    self.taps += 1


def _leased_rows(daemon: BridgeDaemon) -> dict[int, tuple[str, int]]:
    """Outbox rows in flight when the daemon died: id → (channel, attempts)."""
    rows = sqlite_rows(
        daemon.sqlite_path, "SELECT id, channel, attempts FROM outbox WHERE state = 'leased'"
    )
    return {int(r[0]): (str(r[1]), int(r[2])) for r in rows}


def _unfinished(daemon: BridgeDaemon) -> list[tuple[object, ...]]:
    """Outbox rows due now that are not yet in a final state."""
    now = str(datetime.now(UTC).replace(tzinfo=None))
    return sqlite_rows(
        daemon.sqlite_path,
        "SELECT id, kind, state FROM outbox WHERE state = 'leased' OR "
        "(state = 'pending' AND due_at <= ?)",
        (now,),
    )


SOAKS = [
    Soak("ci", kills=3, bookings_per_second=15, min_gap=1.5, max_gap=4.0),
    pytest.param(
        Soak("soak", kills=10, bookings_per_second=25, min_gap=1.0, max_gap=6.0),
        marks=pytest.mark.slow,
        id="soak",
    ),
]


class TestKillNineUnderMixedLoad:
    @pytest.mark.parametrize("soak", SOAKS, ids=lambda s: getattr(s, "name", str(s)))
    def test_acknowledged_messages_survive_and_only_in_flight_sends_repeat(
        self, tmp_path: Path, soak: Soak
    ) -> None:
        seed = run_seed("kill -9")
        rng = random.Random(seed)
        mllp_port, http_port = free_port(), free_port()
        with (
            FakeHis() as his,
            SandboxProcess(
                tmp_path, f"http://127.0.0.1:{http_port}/webhooks/whatsapp", seed
            ) as sandbox,
        ):
            # Given a daemon on SQLite sending to a sandbox that outlives it, with short leases
            # so a dead daemon's rows come back quickly, and reminders due at once (~40 h ahead)
            config = bridge_config(
                mllp_port=mllp_port,
                his_port=his.port,
                whatsapp_url=sandbox.url,
                sandbox_enabled=False,
                relay="lease_seconds = 2.0\nbackoff_base_seconds = 0.2\nbackoff_max_seconds = 1.0",
            )
            daemon = make_daemon(tmp_path, config, http_port=http_port)
            with daemon_running(daemon):
                daemon.wait_ready()
                sender = HisSender(
                    mllp_port, datetime.now(UTC) + timedelta(hours=40), soak.bookings_per_second
                )
                patients = Patients(sandbox, his)
                threads = [threading.Thread(target=t.run, daemon=True) for t in (sender, patients)]
                for thread in threads:
                    thread.start()
                # When it is killed -9 at random moments under load and restarted each time
                in_flight: dict[int, tuple[str, int]] = {}
                for _ in range(soak.kills):
                    time.sleep(rng.uniform(soak.min_gap, soak.max_gap))
                    daemon.kill9()
                    in_flight.update(_leased_rows(daemon))
                    time.sleep(rng.uniform(0.0, 1.0))
                    daemon.start()
                    daemon.wait_ready()
                time.sleep(soak.min_gap)
                sender.stop.set()
                threads[0].join(60)
                assert not sender.failure, sender.failure
                # Then every booking it acknowledged reaches its patient and gets confirmed once
                booked = len(sender.acked)
                wait_for(
                    lambda: len(his.confirmations()) >= booked,
                    120,
                    f"a confirmation for each of {booked} bookings",
                )
                patients.stop.set()
                threads[1].join(30)
                wait_for(lambda: not _unfinished(daemon), 60, "every due outbox row to finish")
                time.sleep(1.0)  # a late duplicate would show up here
                inbox = {
                    r[0]
                    for r in sqlite_rows(
                        daemon.sqlite_path, "SELECT source_id FROM inbox WHERE connector = 'hl7v2'"
                    )
                }
                outbox = {
                    int(r[0]): (str(r[1]), int(r[2]))
                    for r in sqlite_rows(
                        daemon.sqlite_path, "SELECT id, state, attempts FROM outbox"
                    )
                }
                sent = sandbox.messages()
                confirmations = his.confirmations()
        # zero acknowledged HL7 messages lost
        lost = sorted(set(sender.acked) - inbox)
        assert booked > 10 * soak.kills, sender.answers
        assert not lost, f"acknowledged but not stored: {lost}"
        assert len(confirmations) == booked
        # WhatsApp duplicates only where the send was in flight at a kill
        per_row = Counter(m.get("biz_opaque_callback_data") for m in sent)
        duplicates = {int(k): n for k, n in per_row.items() if k is not None and n > 1}
        unexplained = {
            row: n
            for row, n in duplicates.items()
            if row not in in_flight and outbox.get(row, ("", 0))[1] <= 1
        }
        print(
            f"kills: {soak.kills}, bookings acked: {booked}, MLLP answers: "
            f"{dict(sender.answers)}, sends at sandbox: {len(sent)}, in flight at a kill: "
            f"{len(in_flight)}, duplicate sends (outbox id → copies): {duplicates}, "
            f"SRM deliveries beyond one per booking: {sum(his.deliveries().values()) - booked}, "
            f"patient taps: {patients.taps}"
        )
        assert not unexplained, f"sent twice without being in flight at a kill: {unexplained}"
        assert all(outbox[row][0] == "sent" for row in duplicates)
        # zero duplicate EHR writes
        twice = {a: n for a, n in confirmations.items() if n > 1}
        assert not twice, f"SRM^S03 written more than once: {twice}"


class TestKillNineWhileTheHisApplies:
    def test_a_confirmation_in_flight_at_a_kill_reaches_the_his_under_one_control_id(
        self, tmp_path: Path
    ) -> None:
        mllp_port, http_port = free_port(), free_port()
        with (
            FakeHis() as his,
            SandboxProcess(
                tmp_path, f"http://127.0.0.1:{http_port}/webhooks/whatsapp", 7
            ) as sandbox,
        ):
            config = bridge_config(
                mllp_port=mllp_port,
                his_port=his.port,
                whatsapp_url=sandbox.url,
                sandbox_enabled=False,
                relay="lease_seconds = 2.0\nbackoff_base_seconds = 0.2",
            )
            daemon = make_daemon(tmp_path, config, http_port=http_port)
            with daemon_running(daemon):
                daemon.wait_ready()
                # Given a booked appointment whose reminder reached the patient
                start = datetime.now(UTC) + timedelta(hours=40)
                client = MllpClient(mllp_port)
                assert ack_code(client.send(siu("H00001", "A00001", start, phone(1)))) == "AA"
                client.close()
                reminder = wait_for(
                    lambda: [
                        m
                        for m in sandbox.messages()
                        if (m.get("template") or {}).get("name") == REMINDER
                    ],
                    what="the reminder",
                )[0]
                # and a HIS that applies the confirmation but is slow to acknowledge it
                his.hold.set()
                assert sandbox.reply(phone(1), button="confirm", context_id=reminder["id"]) == 200
                assert his.held.wait(30), "the SRM never reached the HIS"
                # When the daemon dies before it hears the ACK, and comes back
                daemon.kill9()
                his.hold.clear()
                daemon.start()
                daemon.wait_ready()
                wait_for(lambda: not _unfinished(daemon), 30, "the EHR command to finish")
                wait_for(lambda: his.deliveries()["A00001"] >= 2, 30, "the SRM resent")
        # Then the HIS can tell the resend from a new decision: one write
        assert his.confirmations() == {"A00001": 1}
