"""Operator commands over a database the loop filled: report, consent export, handoff."""

from __future__ import annotations

import csv
import io
from contextlib import AsyncExitStack
from datetime import timedelta

from tests.e2e.daemon import run_cli
from tests.integration.test_engine_loop import PHONE, Harness, booked, button


async def fill(db) -> Harness:
    async with AsyncExitStack() as stack:
        h = await Harness(db, stack).start()
        await h.ingest(booked())
        await h.later(timedelta(days=1, minutes=1))
        await h.tap(button(h.last("template"), "confirm"))
        await h.text("STOP", address=PHONE)
        await h.text("ayuda", address="+573001230099")
    return h


class TestOperatorCommands:
    async def test_report_counts_reminders_decisions_and_opt_outs_per_clinic(self, sqlite_db,
                                                                             tmp_path):
        await fill(sqlite_db)
        result = run_cli("report", "--csv", "--since", "2026-01-01", "--until", "2027-01-01",
                         env={"BRIDGE_DATA_DIR": str(tmp_path)})
        assert result.returncode == 0, result.stderr
        rows = {r["clinic"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
        clinic = rows["Sede Norte"]
        assert int(clinic["sent"]) >= 2  # the reminder and the confirmation
        assert clinic["confirmed"] == "1"
        assert clinic["opt_outs"] == "1"
        assert clinic["median_reply_min"] != "-"

    async def test_consent_export_lists_the_opt_out_with_its_evidence(self, sqlite_db, tmp_path):
        await fill(sqlite_db)
        result = run_cli("consent", "export", env={"BRIDGE_DATA_DIR": str(tmp_path)})
        [row] = list(csv.DictReader(io.StringIO(result.stdout)))
        assert (row["address"], row["action"], row["source"]) == (PHONE, "opt_out", "whatsapp")
        assert row["evidence"].startswith("wamid.")

    async def test_handoff_list_reply_and_release(self, sqlite_db, tmp_path):
        await fill(sqlite_db)
        env = {"BRIDGE_DATA_DIR": str(tmp_path), "BRIDGE_OPERATOR": "nurse-7"}
        listed = run_cli("handoff", "list", env=env)
        assert "+573001230099" in listed.stdout and "patient_asked" in listed.stdout
        replied = run_cli("handoff", "reply", "+573001230099", "Hola, le llamamos hoy.", env=env)
        assert replied.returncode == 0, replied.stderr
        closed = run_cli("handoff", "reply", "+573009999999", "hola", env=env)
        assert closed.returncode == 2 and "24 hours" in closed.stderr
        released = run_cli("handoff", "release", "+573001230099", env=env)
        assert released.returncode == 0
        assert "+573001230099" not in run_cli("handoff", "list", env=env).stdout
        verify = run_cli("audit", "verify", env=env)
        assert verify.returncode == 0 and "intact" in verify.stdout
