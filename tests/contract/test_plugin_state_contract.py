"""Plugin state survives a restart, on SQLite and PostgreSQL (FHIR history and cursors use it)."""

from __future__ import annotations

from datetime import UTC, datetime

from bridge.domain import AppointmentInfo
from bridge.store.kv import KvState
from bridge.testing import FixedClock
from connectors.fhir._ingest import StateAppointmentHistory

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class TestPluginState:
    async def test_values_are_namespaced_and_replaced(self, db):
        a, b = KvState(db, FixedClock(NOW), "plugin:a"), KvState(db, FixedClock(NOW), "plugin:b")
        await a.set("cursor", "1")
        await a.set("cursor", "2")
        assert (await a.get("cursor"), await b.get("cursor")) == ("2", None)

    async def test_fhir_history_recognises_a_reschedule_after_a_restart(self, db):
        first = StateAppointmentHistory(KvState(db, FixedClock(NOW), "plugin:connectors.fhir"))
        v1 = AppointmentInfo(id="A1", status="booked", version="1", start=NOW)
        await first.remember(v1)
        restarted = StateAppointmentHistory(KvState(db, FixedClock(NOW),
                                                    "plugin:connectors.fhir"))
        assert await restarted.previous("A1", "2") == v1
