"""The WhatsApp side failing one call in five (issue 7): every message still ends sent once.

A real ``bridge run`` sends reminders and confirmation texts to its embedded sandbox while the
sandbox answers 20 % of send calls with a fault: HTTP 429 (130429), HTTP 5xx (500, 503, or a
proxy's plain-text 502), no answer until the client gives up, or a connection reset half-way
through the answer. None of those faults accepts the message (bridge/sandbox/_sandbox.py
``Faults``), so the only correct outcome is one copy at the sandbox per outbox row, every row
in a final state, none left ``leased`` or ``pending`` once its retries are over.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.daemon import free_port
from tests.faults._harness import (
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

BOOKINGS = 60
FAULTS = {
    "status_429_rate": 0.05,
    "status_5xx_rate": 0.05,
    "timeout_rate": 0.05,
    "reset_rate": 0.05,
    "timeout_seconds": 2.0,
}


class TestGraphApiFailingOneCallInFive:
    def test_every_message_is_sent_exactly_once_and_no_row_is_left_in_flight(
        self, tmp_path: Path
    ) -> None:
        seed = run_seed("sandbox fault")
        mllp_port, http_port = free_port(), free_port()
        with (
            FakeHis() as his,
            SandboxProcess(
                tmp_path, f"http://127.0.0.1:{http_port}/webhooks/whatsapp", seed
            ) as sandbox,
        ):
            # Given a sandbox failing 20 % of send calls (5 % each of 429, 5xx, timeout, reset)
            in_force = sandbox.set_faults(**FAULTS, seed=seed)
            assert sum(in_force[k] for k in FAULTS if k.endswith("_rate")) == pytest.approx(0.2)
            # and a daemon that retries quickly and gives up on a silent Graph after 1 s
            config = bridge_config(
                mllp_port=mllp_port,
                his_port=his.port,
                whatsapp_url=sandbox.url,
                sandbox_enabled=False,
                relay="backoff_base_seconds = 0.1\nbackoff_max_seconds = 1.0",
            )
            config = config.replace("[whatsapp]\n", "[whatsapp]\ntimeout_seconds = 1.0\n")
            daemon = make_daemon(tmp_path, config, http_port=http_port)
            with daemon_running(daemon):
                daemon.wait_ready()
                # When the HIS books appointments whose reminders are due at once
                start = datetime.now(UTC) + timedelta(hours=40)
                client = MllpClient(mllp_port)
                for index in range(BOOKINGS):
                    ack = client.send(siu(f"F{index:05d}", f"A{index:05d}", start, phone(index)))
                    assert ack_code(ack) == "AA"
                client.close()

                def reminders() -> list[dict[str, object]]:
                    return [
                        m
                        for m in sandbox.messages()
                        if (m.get("template") or {}).get("name") == "appointment_reminder"
                    ]

                # and half of the patients tap Confirm (a text back, and an SRM to the HIS)
                tapped: set[str] = set()

                def tap_until_all_reminded() -> bool:
                    seen = reminders()
                    for message in seen:
                        to = str(message["to"])
                        if int(to[-4:]) % 2 == 0 and to not in tapped:
                            assert (
                                sandbox.reply(to, button="confirm", context_id=str(message["id"]))
                                == 200
                            )
                            tapped.add(to)
                    return len({m["to"] for m in seen}) >= BOOKINGS

                wait_for(tap_until_all_reminded, 90, f"{BOOKINGS} reminders through the faults")
                wait_for(
                    lambda: len(his.confirmations()) >= BOOKINGS // 2,
                    60,
                    "the confirmations at the HIS",
                )
                now = str(datetime.now(UTC).replace(tzinfo=None))

                def unfinished() -> list[tuple[object, ...]]:
                    return sqlite_rows(
                        daemon.sqlite_path,
                        "SELECT id FROM outbox WHERE state = 'leased' OR "
                        "(state = 'pending' AND due_at <= ?)",
                        (now,),
                    )

                wait_for(lambda: not unfinished(), 90, "every due row to reach a final state")
                rows = sqlite_rows(
                    daemon.sqlite_path,
                    "SELECT id, channel, state, attempts, last_error_code "
                    "FROM outbox WHERE due_at <= ?",
                    (now,),
                )
                sent = sandbox.messages()
                stats = sandbox.stats()
        # Then every WhatsApp row is sent, and is at the sandbox exactly once
        whatsapp = [r for r in rows if r[1] == "whatsapp"]
        copies = Counter(m.get("biz_opaque_callback_data") for m in sent)
        not_sent = [(r[0], r[2], r[4]) for r in whatsapp if r[2] != "sent"]
        assert not not_sent, f"rows not sent (id, state, last error code): {not_sent}"
        assert {int(k): n for k, n in copies.items() if k is not None} == {
            int(r[0]): 1 for r in whatsapp
        }
        # and the faults really happened: some rows needed more than one attempt
        retried = [r for r in whatsapp if int(r[3]) > 1]
        print(
            f"rows: {len(rows)}, whatsapp rows: {len(whatsapp)}, retried: {len(retried)}, "
            f"sandbox stats: {stats}"
        )
        assert retried
        assert sum(stats["faults"].values()) >= 5, stats["faults"]
        # and every confirmation reached the HIS once
        assert set(his.confirmations().values()) == {1}
        assert len(his.confirmations()) == BOOKINGS // 2
