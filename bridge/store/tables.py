"""The bridge's tables (SQLAlchemy Core), one schema for SQLite and PostgreSQL.

Alembic migrations in ``bridge/migrations`` create exactly this schema; a test runs alembic's
autogenerate against both databases and expects no difference.

Tables and why they exist:

- ``inbox``: every raw inbound message (HL7 frame, FHIR resource, webhook body), stored before
  anything is acknowledged. Dedupe key = connector + sender + source id; with the payload hash it
  is unique, so a true duplicate is found and a reused id with a new payload is a conflict.
- ``event``: canonical events derived from inbox rows in the same transaction; the engine
  consumes them in ``seq`` order.
- ``outbox``: every message the bridge plans to send, with leases for the relay.
- ``conversation``: per patient channel address: the 24 h window and human handoff state.
- ``consent``: append-only opt-in / opt-out ledger with evidence.
- ``audit``: append-only, hash-chained log of decisions and operator actions (ids, not text).
- ``kv``: small named values (poll cursors, template sync time).
- ``appointment``: the latest known state of each appointment and how to reach its patient, so
  re-planning, replies and send-time checks read one row instead of replaying events.

With a data key (``BRIDGE_DATA_KEY``, see ``bridge.store.sealing``) patient phones and names are
kept only sealed: lookup columns (``address``, ``recipient_key``, ``address:`` subjects) hold a
keyed hash, ``*_sealed`` companions hold the value, and payloads (``inbox``, ``event``,
``outbox``) are sealed whole.
"""

from __future__ import annotations

__all__ = [
    "OUTBOX_STATES",
    "UtcDateTime",
    "appointment",
    "audit",
    "consent",
    "conversation",
    "event",
    "inbox",
    "kv",
    "metadata",
    "outbox",
]

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

#: Named constraints, so migrations can alter them on SQLite (batch mode) and PostgreSQL alike.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
_BigId = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp that goes in and comes out timezone-aware UTC on both databases.

    SQLite has no time zones and SQLAlchemy returns naive values from it; storing naive UTC and
    re-attaching UTC on the way out keeps ``due_at <= now`` comparisons right everywhere.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


_Time = UtcDateTime()

inbox = Table(
    "inbox",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("connector", String(32), nullable=False),
    Column("sender", String(200), nullable=False),
    Column("source_id", String(200), nullable=False),
    Column("dedupe_key", String(450), nullable=False),
    Column("payload_hash", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=True),  # NULL once purged by retention
    Column("content_type", String(64), nullable=False),
    Column("received_at", _Time, nullable=False),
    #: stored | conflict | quarantined
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("problems", JSON, nullable=True),
    UniqueConstraint("dedupe_key", "payload_hash"),
    Index(None, "received_at"),
    Index(None, "state", "received_at"),
)

event = Table(
    "event",
    metadata,
    Column("seq", _BigId, primary_key=True, autoincrement=True),
    Column("event_id", String(32), nullable=False, unique=True),
    Column("inbox_id", String(32), nullable=True),
    Column("type", String(40), nullable=False),
    #: what the event is about (``appointment:<system>|<id>``), to re-plan by subject
    Column("subject_key", String(300), nullable=True),
    Column("payload", JSON, nullable=False),
    Column("occurred_at", _Time, nullable=False),
    #: pending | done | failed
    Column("state", String(12), nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", _Time, nullable=True),
    Column("processed_at", _Time, nullable=True),
    Column("error", Text, nullable=True),
    Index(None, "state", "seq"),
    Index(None, "subject_key"),
)

#: Outbox states. ``pending`` waits for ``next_attempt_at``; ``leased`` is held by a relay;
#: ``sent`` was accepted by the channel (delivery status in ``delivery_status``); ``failed`` is
#: permanent; ``dead`` exhausted its attempts; ``cancelled`` was re-planned away; ``held`` waits
#: for an operator or a condition (template paused, tier cap).
OUTBOX_STATES = ("pending", "leased", "sent", "failed", "dead", "cancelled", "held")

outbox = Table(
    "outbox",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("kind", String(40), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("idempotency_key", String(300), nullable=False, unique=True),
    Column("subject_key", String(300), nullable=True),
    Column("recipient_key", String(200), nullable=True),
    Column("payload", JSON, nullable=False),
    Column("due_at", _Time, nullable=False),
    Column("next_attempt_at", _Time, nullable=False),
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires_at", _Time, nullable=True),
    Column("external_id", String(200), nullable=True),
    Column("delivery_status", String(16), nullable=True),
    Column("last_error_code", String(40), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", _Time, nullable=False),
    Column("updated_at", _Time, nullable=False),
    Column("sent_at", _Time, nullable=True),
    Index(None, "state", "next_attempt_at"),
    Index(None, "subject_key"),
    Index(None, "external_id"),
    Index(None, "lease_owner"),
)

conversation = Table(
    "conversation",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("channel", String(32), nullable=False),
    #: E.164 phone, or WhatsApp's business-scoped user id when the phone is hidden; with a
    #: data key, its lookup hash (``bridge.store.sealing``)
    Column("address", String(200), nullable=False),
    #: with a data key: the address, sealed (NULL without a key)
    Column("address_sealed", LargeBinary, nullable=True),
    Column("patient_key", String(300), nullable=True),
    Column("last_inbound_at", _Time, nullable=True),
    #: bot | handoff
    Column("mode", String(12), nullable=False, default="bot"),
    Column("handoff_reason", String(40), nullable=True),
    Column("unknown_replies", Integer, nullable=False, default=0),
    Column("updated_at", _Time, nullable=False),
    UniqueConstraint("channel", "address"),
)

consent = Table(
    "consent",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    #: the WhatsApp address; with a data key, its lookup hash
    Column("address", String(200), nullable=False),
    #: with a data key: the address, sealed (NULL without a key)
    Column("address_sealed", LargeBinary, nullable=True),
    #: opt_in | opt_out
    Column("action", String(12), nullable=False),
    #: where the evidence comes from: ehr, whatsapp, operator, import
    Column("source", String(32), nullable=False),
    Column("channel", String(32), nullable=False),
    #: an id pointing at the evidence (wamid, HL7 message id, operator token name)
    Column("evidence", String(300), nullable=True),
    Column("recorded_at", _Time, nullable=False),
    Index(None, "address", "recorded_at"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column("at", _Time, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(60), nullable=False),
    Column("subject", String(300), nullable=True),
    Column("detail", JSON, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)

kv = Table(
    "kv",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", _Time, nullable=False),
)

appointment = Table(
    "appointment",
    metadata,
    #: ``appointment:<system>|<id>``, the same key as ``event.subject_key``
    Column("subject_key", String(300), primary_key=True),
    Column("connector", String(32), nullable=False),
    Column("system", String(200), nullable=False),
    Column("appointment_id", String(200), nullable=False),
    Column("version", String(64), nullable=True),
    Column("status", String(24), nullable=False),
    Column("start_at", _Time, nullable=True),
    Column("end_at", _Time, nullable=True),
    Column("patient_id", String(200), nullable=False),
    #: E.164 phone the patient is reached on (PHI); with a data key, its lookup hash
    Column("address", String(200), nullable=True),
    #: with a data key: the phone, sealed (NULL without a key)
    Column("address_sealed", LargeBinary, nullable=True),
    Column("language", String(12), nullable=True),
    #: PHI, used only to render a template's first-name parameter; NULL with a data key
    Column("given_name", String(200), nullable=True),
    #: with a data key: the given name, sealed
    Column("given_name_sealed", LargeBinary, nullable=True),
    Column("location", String(300), nullable=True),
    Column("practitioner", String(300), nullable=True),
    Column("service", String(300), nullable=True),
    Column("schedule_id", String(200), nullable=True),
    Column("contact_allowed", Boolean, nullable=False, default=True),
    Column("contact_block_reason", String(40), nullable=True),
    Column("last_event_id", String(32), nullable=True),
    Column("updated_at", _Time, nullable=False),
    Index(None, "address", "start_at"),
)
