"""The engine assembled: event handlers, the relay's hooks, and the extra channels it sends on.

Signing keys for reply and portal tokens come from the environment
(``BRIDGE_TOKEN_SIGNING_KEY``, ``BRIDGE_PORTAL_SIGNING_KEY``) when set; otherwise a random key is
created once and kept in the database, so every daemon sharing a PostgreSQL signs and verifies
with the same key and the embedded default works with no set-up. A portal that verifies links
needs the key from the environment.
"""

from __future__ import annotations

__all__ = ["Engine"]

import secrets as pysecrets
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from bridge.config import Settings
from bridge.engine.commands import EhrChannel, StaffWebhookChannel
from bridge.engine.delivery import DeliveryTracker
from bridge.engine.followups import FollowUps
from bridge.engine.mappings import MappingSet
from bridge.engine.planner import Planner
from bridge.engine.processor import Handler
from bridge.engine.render import Renderer
from bridge.engine.replies import ReplyHandler
from bridge.engine.templates import TemplateStatuses
from bridge.engine.tokens import PortalTokens, ReplyTokens
from bridge.errors import SendHeld
from bridge.logging import get_logger
from bridge.ports import AcquiredRow, Channel, Clock, Connector, Notification
from bridge.store import AuditLog, Database, SqlOutbox
from bridge.store.appointments import AppointmentStore
from bridge.store.consent import ConsentLedger
from bridge.store.conversations import Conversations
from bridge.store.kv import KvState
from bridge.store.sealing import PLAIN, DataCipher
from bridge.store.tables import kv

#: How long a send of a paused or disabled template waits before it is looked at again.
_TEMPLATE_HOLD = timedelta(minutes=15)


async def signing_key(db: Database, clock: Clock, name: str, configured: str | None) -> bytes:
    """The configured key, or the one kept in the database (created on first use)."""
    if configured:
        return configured.encode()
    insert = sqlite.insert if db.is_sqlite else postgresql.insert
    async with db.write() as conn:
        await conn.execute(
            insert(kv)
            .values(name=f"key:{name}", value=pysecrets.token_hex(32), updated_at=clock.now())
            .on_conflict_do_nothing(index_elements=["name"])
        )
        value = (
            await conn.execute(select(kv.c.value).where(kv.c.name == f"key:{name}"))
        ).scalar_one()
    return bytes.fromhex(value)


class Engine:
    """Everything that decides, wired to the store and the connectors."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        clock: Clock,
        outbox: SqlOutbox,
        audit: AuditLog,
        connectors: Mapping[str, Connector],
        mappings: MappingSet,
        reply_key: bytes,
        portal_key: bytes,
        http_client: httpx.AsyncClient,
        cipher: DataCipher = PLAIN,
    ) -> None:
        engine_settings = settings.engine
        #: seals patient phones and names in the stores (the identity without a data key)
        self.cipher = cipher
        self.appointments = AppointmentStore(db, clock, cipher)
        self.conversations = Conversations(db, clock, cipher=cipher)
        self.consent = ConsentLedger(db, clock, cipher)
        self.delivery = DeliveryTracker(db, clock, cipher=cipher)
        self.tokens = ReplyTokens(reply_key)
        self.portal = PortalTokens(portal_key)
        self.planner = Planner(
            db=db,
            clock=clock,
            outbox=outbox,
            appointments=self.appointments,
            audit=audit,
            settings=engine_settings,
            timezone=settings.timezone,
            cipher=cipher,
        )
        self.replies = ReplyHandler(
            db=db,
            clock=clock,
            outbox=outbox,
            appointments=self.appointments,
            conversations=self.conversations,
            consent=self.consent,
            audit=audit,
            delivery=self.delivery,
            tokens=self.tokens,
            connectors=connectors,
            settings=engine_settings,
            cipher=cipher,
        )
        self.renderer = Renderer(
            clock=clock,
            mappings=mappings,
            appointments=self.appointments,
            conversations=self.conversations,
            consent=self.consent,
            tokens=self.tokens,
            portal=self.portal,
            settings=engine_settings,
            timezone=settings.timezone,
        )
        self.followups = FollowUps(
            clock=clock, outbox=outbox, audit=audit, conversations=self.conversations
        )
        self.templates = TemplateStatuses(
            KvState(db, clock, "templates"), clock, audit, get_logger(component="templates")
        )
        self._clock = clock
        self._channels: dict[str, Channel] = {
            f"ehr:{name}": EhrChannel(connector) for name, connector in connectors.items()
        }
        if engine_settings.handoff_webhook_url:
            self._channels["staff"] = StaffWebhookChannel(
                engine_settings.handoff_webhook_url, http_client
            )

    @classmethod
    async def create(
        cls,
        *,
        settings: Settings,
        db: Database,
        clock: Clock,
        outbox: SqlOutbox,
        audit: AuditLog,
        connectors: Mapping[str, Connector],
        http_client: httpx.AsyncClient,
        cipher: DataCipher = PLAIN,
    ) -> Engine:
        """Load mappings and keys, then build the engine.

        Raises:
            bridge.errors.ConfigError: the mappings are invalid.
        """
        folder = settings.engine.mappings_dir
        mappings = MappingSet.load(Path(folder)) if folder else MappingSet.default()
        reply_key = await signing_key(
            db, clock, "reply-tokens", settings.secrets.get("BRIDGE_TOKEN_SIGNING_KEY")
        )
        portal_key = await signing_key(
            db, clock, "portal-tokens", settings.secrets.get("BRIDGE_PORTAL_SIGNING_KEY")
        )
        return cls(
            settings=settings,
            db=db,
            clock=clock,
            outbox=outbox,
            audit=audit,
            connectors=connectors,
            mappings=mappings,
            reply_key=reply_key,
            portal_key=portal_key,
            http_client=http_client,
            cipher=cipher,
        )

    def handlers(self) -> dict[str, Handler]:
        """Handler per event type, for the event processor."""
        handlers: dict[str, Any] = dict(self.planner.handlers())
        handlers["reply.received"] = self.replies.on_reply
        handlers["status.updated"] = self.delivery.on_status
        handlers["template.status_changed"] = self.templates.on_status_changed
        return handlers

    async def prepare(self, row: AcquiredRow) -> Notification:
        """The relay's hook: render the row, then hold it if Meta paused its template.

        Raises:
            SkipNotification, MappingError: from the renderer.
            SendHeld: the template is paused or disabled; tried again later, no attempt used.
        """
        notification = await self.renderer.prepare(row)
        if notification.kind == "template":
            name = str(notification.content.get("name"))
            language = str(notification.content.get("language"))
            if status := await self.templates.blocked(name, language):
                raise SendHeld(
                    f"template_{status.lower()}",
                    self._clock.now() + _TEMPLATE_HOLD,
                    self._clock.now(),
                )
        return notification

    def channels(self) -> dict[str, Channel]:
        """The EHR-command and staff channels the relay sends on, besides WhatsApp."""
        return dict(self._channels)
