"""The store: SQLAlchemy tables, inbox (dedupe, group commit), outbox (leases), audit, migrations."""

from __future__ import annotations

from bridge.store.audit import AuditLog, AuditVerdict
from bridge.store.database import Database
from bridge.store.inbox import InboxWriter
from bridge.store.outbox import OutboxView, SqlOutbox
from bridge.store.tables import metadata

__all__ = [
    "AuditLog",
    "AuditVerdict",
    "Database",
    "InboxWriter",
    "OutboxView",
    "SqlOutbox",
    "metadata",
]
