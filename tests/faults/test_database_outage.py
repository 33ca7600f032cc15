"""The database unreachable for a while (issue 7): the daemon stops acknowledging, says it is not
ready, and recovers by itself.

A real ``bridge run`` on PostgreSQL reaches the server through a TCP proxy in the test process.
Cutting the proxy closes its port and resets every open connection, as a crashed database host
would. While cut, no HL7 message may get ``AA`` (MLLP answers ``AE`` or nothing: it could not
store it) and ``/readyz`` answers 503; once the proxy is back, ``AA`` and ``/readyz`` 200 return
without a restart, and everything acknowledged is in the inbox.

The CI version cuts the database for 5 s; the ``slow`` version for 10 s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select

from bridge.store import Database
from bridge.store.tables import inbox
from tests.e2e.daemon import free_port
from tests.faults._harness import (
    FakeHis,
    MllpClient,
    TcpProxy,
    ack_code,
    bridge_config,
    daemon_running,
    make_daemon,
    phone,
    siu,
    wait_for,
)


@dataclass(frozen=True)
class Outage:
    """How long the database is gone."""

    name: str
    seconds: float


async def _stored_control_ids(url: str) -> set[str]:
    """MSH-10 of every HL7 message in the inbox, read straight from PostgreSQL."""
    db = Database(url)
    try:
        async with db.read() as conn:
            rows = await conn.execute(select(inbox.c.source_id).where(inbox.c.connector == "hl7v2"))
            return {str(r[0]) for r in rows}
    finally:
        await db.dispose()


def _readyz(url: str) -> int:
    try:
        return httpx.get(f"{url}/readyz", timeout=3).status_code
    except httpx.HTTPError:
        return 0


OUTAGES = [
    Outage("ci-5s", 5.0),
    pytest.param(Outage("10s", 10.0), marks=pytest.mark.slow, id="10s"),
]


@pytest.mark.external_service
class TestDatabaseUnreachable:
    @pytest.mark.parametrize("outage", OUTAGES, ids=lambda o: getattr(o, "name", str(o)))
    def test_no_aa_while_the_database_is_gone_and_recovery_without_a_restart(
        self, tmp_path: Path, pg_url: str, outage: Outage
    ) -> None:
        target = urlsplit(pg_url)
        mllp_port, sandbox_port = free_port(), free_port()
        start = datetime.now(UTC) + timedelta(hours=40)
        with FakeHis() as his, TcpProxy(target.port or 5432) as proxy:
            # Given a daemon whose only way to PostgreSQL is a proxy we control
            db_url = pg_url.replace(target.netloc, f"{target.username}@127.0.0.1:{proxy.port}")
            config = bridge_config(
                mllp_port=mllp_port,
                his_port=his.port,
                whatsapp_url=f"http://127.0.0.1:{sandbox_port}",
                sandbox_enabled=True,
                sandbox_port=sandbox_port,
            )
            daemon = make_daemon(tmp_path, config, env={"BRIDGE_DATABASE_URL": db_url})
            with daemon_running(daemon):
                daemon.wait_ready()
                client = MllpClient(mllp_port, timeout=3)
                assert ack_code(client.send(siu("D00000", "A00000", start, phone(0)))) == "AA"
                acked = {"D00000"}
                # When the database becomes unreachable
                proxy.cut()
                cut_at = time.monotonic()
                answers: Counter[str] = Counter()
                readiness: list[int] = []
                refused: dict[str, bytes] = {}
                index = 1
                while time.monotonic() - cut_at < outage.seconds:
                    control = f"D{index:05d}"
                    frame = siu(control, f"A{index:05d}", start, phone(index))
                    code = ack_code(client.send(frame)) or "none"
                    answers[code] += 1
                    if code == "AA":
                        acked.add(control)
                    else:
                        refused[control] = frame
                    readiness.append(_readyz(daemon.url))
                    index += 1
                    time.sleep(0.2)
                still_alive = daemon.alive()
                # Then it never acknowledged what it could not store, and said it was not ready
                assert "AA" not in answers, f"AA while the database was gone: {answers}"
                assert set(answers) <= {"AE", "none"}, answers
                assert readiness[-1] == 503, readiness
                assert still_alive
                # When the database comes back, it recovers by itself
                proxy.restore()
                back_at = time.monotonic()
                wait_for(daemon.ready, 60, "/readyz 200 after the outage")
                recovered_in = time.monotonic() - back_at

                def acked_again() -> bool:
                    control = f"R{len(acked):05d}"
                    ok = ack_code(client.send(siu(control, control, start, phone(9999)))) == "AA"
                    if ok:
                        acked.add(control)
                    return ok

                wait_for(acked_again, 60, "AA after the outage", every=0.5)
                # and what it refused during the outage is taken when the HIS resends it
                for control, frame in refused.items():
                    assert ack_code(client.send(frame)) == "AA", control
                    acked.add(control)
                client.close()
                stored = asyncio.run(_stored_control_ids(pg_url))
        print(
            f"outage {outage.seconds} s: MLLP answers {dict(answers)}, /readyz "
            f"{Counter(readiness)}, ready again {recovered_in:.1f} s after the database"
        )
        assert acked <= stored, f"acknowledged but not stored: {sorted(acked - stored)}"
