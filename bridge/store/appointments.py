"""The latest known state of each appointment, and how to reach its patient.

Written by the engine on every appointment event (in ``seq`` order, so the row is the EHR's
latest word) and read when a reminder is about to go out, when a reply arrives, and for reports.
With a data key the phone is kept as a lookup hash plus its sealed value, and the given name
sealed only (``bridge.store.sealing``); callers always pass and get plain values.
"""

from __future__ import annotations

__all__ = ["AppointmentRecord", "AppointmentStore"]

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bridge.domain import AppointmentEvent, AppointmentInfo, PatientInfo
from bridge.ports import Clock
from bridge.store.database import Database
from bridge.store.sealing import PLAIN, DataCipher
from bridge.store.tables import appointment


@dataclass(frozen=True, kw_only=True, slots=True)
class AppointmentRecord:
    """One row of ``appointment``."""

    subject_key: str
    connector: str
    info: AppointmentInfo
    patient: PatientInfo

    @property
    def start(self) -> datetime | None:
        """The appointment's start."""
        return self.info.start


class AppointmentStore:
    """Upsert and look up appointments.

    Args:
        db: the database.
        clock: gives ``updated_at``.
        cipher: seals the phone and name when a data key is configured.
    """

    def __init__(self, db: Database, clock: Clock, cipher: DataCipher = PLAIN) -> None:
        self._db = db
        self._clock = clock
        self._cipher = cipher

    async def upsert(
        self, subject_key: str, evt: AppointmentEvent
    ) -> tuple[AppointmentRecord | None, AppointmentRecord]:
        """Store the event's view; returns the previous record (None when new) and the new one.

        Patient fields the event leaves empty keep their stored value, except the phone when the
        EHR explicitly cleared it.
        """
        previous = await self.get(subject_key)
        info, patient = evt.appointment, evt.patient
        address = patient.phone
        if address is None and previous is not None and not patient.phone_cleared:
            address = previous.patient.phone
        language = patient.language or (previous.patient.language if previous else None)
        given_name = patient.given_name or (previous.patient.given_name if previous else None)
        values: dict[str, object] = {
            "connector": evt.source.connector,
            "system": info.system,
            "appointment_id": info.id,
            "version": info.version,
            "status": info.status,
            "start_at": info.start,
            "end_at": info.end,
            "patient_id": patient.id,
            **self._patient_columns(address, given_name),
            "language": language,
            "location": info.location,
            "practitioner": info.practitioner,
            "service": info.service,
            "schedule_id": info.schedule_id,
            "contact_allowed": patient.contact_allowed,
            "contact_block_reason": patient.contact_block_reason,
            "last_event_id": evt.event_id,
            "updated_at": self._clock.now(),
        }
        async with self._db.write() as conn:
            await conn.execute(
                _upsert_statement(self._db.is_sqlite), {"subject_key": subject_key, **values}
            )
        current = AppointmentRecord(
            subject_key=subject_key,
            connector=evt.source.connector,
            info=info,
            patient=PatientInfo(
                id=patient.id,
                phone=address,
                language=language,
                given_name=given_name,
                contact_allowed=patient.contact_allowed,
                contact_block_reason=patient.contact_block_reason,
            ),
        )
        return previous, current

    async def get(self, subject_key: str) -> AppointmentRecord | None:
        """The record, or None."""
        async with self._db.lookup() as conn:
            row = (await conn.execute(_BY_SUBJECT, {"subject_key": subject_key})).one_or_none()
        return _record(row, self._cipher) if row is not None else None

    async def upcoming_for(self, address: str, now: datetime) -> list[AppointmentRecord]:
        """Booked appointments of the patient at ``address`` that have not started yet."""
        async with self._db.read() as conn:
            rows = (
                await conn.execute(
                    select(appointment)
                    .where(
                        appointment.c.address == self._cipher.lookup(address),
                        appointment.c.start_at > now,
                        appointment.c.status == "booked",
                    )
                    .order_by(appointment.c.start_at)
                )
            ).all()
        return [_record(r, self._cipher) for r in rows]

    async def update_patient(self, connector: str, patient: PatientInfo) -> None:
        """Refresh phone, language, name and privacy on every appointment of ``patient``.

        Fields the update leaves empty keep their stored value, except the phone when the EHR
        explicitly cleared it.
        """
        values: dict[str, Any] = {
            "contact_allowed": patient.contact_allowed,
            "contact_block_reason": patient.contact_block_reason,
            "updated_at": self._clock.now(),
        }
        if patient.phone or patient.phone_cleared:
            values["address"] = self._cipher.lookup_optional(patient.phone)
            values["address_sealed"] = self._cipher.seal_text(patient.phone)
        if patient.language:
            values["language"] = patient.language
        if patient.given_name:
            values["given_name"] = self._cipher.clear(patient.given_name)
            values["given_name_sealed"] = self._cipher.seal_text(patient.given_name)
        async with self._db.write() as conn:
            await conn.execute(
                update(appointment)
                .where(appointment.c.patient_id == patient.id, appointment.c.connector == connector)
                .values(**values)
            )

    def _patient_columns(self, address: str | None, given_name: str | None) -> dict[str, Any]:
        """The stored form of the phone and the name: plain, or hashed and sealed."""
        return {
            "address": self._cipher.lookup_optional(address),
            "address_sealed": self._cipher.seal_text(address),
            "given_name": self._cipher.clear(given_name),
            "given_name_sealed": self._cipher.seal_text(given_name),
        }


def _record(r: Row[Any], cipher: DataCipher) -> AppointmentRecord:
    info = AppointmentInfo(
        id=r.appointment_id,
        status=r.status,
        start=r.start_at,
        end=r.end_at,
        system=r.system,
        version=r.version,
        location=r.location,
        practitioner=r.practitioner,
        service=r.service,
        schedule_id=r.schedule_id,
    )
    patient = PatientInfo(
        id=r.patient_id,
        phone=cipher.reveal(r.address, r.address_sealed),
        language=r.language,
        given_name=cipher.reveal(r.given_name, r.given_name_sealed),
        contact_allowed=r.contact_allowed,
        contact_block_reason=r.contact_block_reason,
    )
    return AppointmentRecord(
        subject_key=r.subject_key, connector=r.connector, info=info, patient=patient
    )


#: Built once: building the upsert cost more than running it.
_UPSERT: dict[bool, Any] = {}
_BY_SUBJECT = select(appointment).where(appointment.c.subject_key == bindparam("subject_key"))


def _upsert_statement(is_sqlite: bool) -> Any:
    """Insert-or-update of every column but the key, from the row's own values."""
    stmt = _UPSERT.get(is_sqlite)
    if stmt is None:
        insert = (sqlite.insert if is_sqlite else postgresql.insert)(appointment)
        stmt = insert.on_conflict_do_update(
            index_elements=["subject_key"],
            set_={
                c.name: insert.excluded[c.name] for c in appointment.c if c.name != "subject_key"
            },
        )
        _UPSERT[is_sqlite] = stmt
    return stmt
