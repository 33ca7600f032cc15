"""Helpers for the mapping tests: paths, synthetic contexts, file edits.

Every patient here is synthetic (fictional names, +57300123xxxx numbers).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bridge.domain import AppointmentInfo, FreeSlot, PatientInfo
from bridge.engine.mappings import RenderContext

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "mappings"
PACKAGED = REPO / "bridge" / "engine" / "default_mappings"
SANDBOX_TEMPLATES = REPO / "bridge" / "sandbox" / "templates.json"

#: Every payload key the shipped mappings use, each with a distinct synthetic token.
PAYLOAD_KEYS = (
    "confirm",
    "reschedule",
    "cancel",
    "cancel_yes",
    "keep",
    *(f"rating{n}" for n in range(1, 6)),
)

#: 2024-11-07 02:30 UTC is still Wednesday 6 November, 21:30, in Bogotá (UTC-5).
LATE_EVENING_BOGOTA = datetime(2024, 11, 7, 2, 30, tzinfo=UTC)


def synthetic_context(**overrides: Any) -> RenderContext:
    """A context every shipped kind can render from; keyword arguments replace its fields."""
    slot_start = datetime(2024, 11, 12, 14, 0, tzinfo=UTC)
    values: dict[str, Any] = {
        "patient": PatientInfo(
            id="P-0001", phone="+573001230001", language="es", given_name="Ana Lucía"
        ),
        "appointment": AppointmentInfo(
            id="A-0001",
            status="booked",
            start=LATE_EVENING_BOGOTA,
            end=LATE_EVENING_BOGOTA + timedelta(minutes=30),
            location="Sede Norte",
            practitioner="Dra. Ejemplo",
            service="Medicina general",
        ),
        "timezone": "America/Bogota",
        "portal_token": "v1.AbCdEf0123.sig",
        "payloads": {key: f"{key}.tok{n:02d}" for n, key in enumerate(PAYLOAD_KEYS)},
        "slots": tuple(
            FreeSlot(
                id=f"S-{n}",
                start=slot_start + timedelta(days=n, hours=n),
                end=slot_start + timedelta(days=n, hours=n, minutes=30),
            )
            for n in range(3)
        ),
        "slot_payloads": tuple(f"slot.tok{n}" for n in range(3)),
    }
    values.update(overrides)
    return RenderContext(**values)


Edit = Callable[[Path], None]


def replace_in(relative: str, old: str, new: str) -> Edit:
    """An edit that replaces ``old`` by ``new`` in one file of a site (``old`` must be there)."""

    def edit(site: Path) -> None:
        path = site / relative
        text = path.read_text(encoding="utf-8")
        assert old in text, f"{old!r} not in {relative}"
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return edit
