"""The consent ledger: append-only opt-in / opt-out evidence per WhatsApp address.

The latest row for an address wins. Opt-out keywords, operator commands and EHR flags all append
here, with where the evidence came from (source, channel, an id pointing at it), so the EHR team
can be given the whole history (``bridge consent export``). With a data key the ledger finds
an address by its lookup hash and keeps the address itself sealed (``bridge.store.sealing``).
"""

from __future__ import annotations

__all__ = ["ConsentEntry", "ConsentLedger"]

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, insert, select

from bridge.ports import Clock
from bridge.store.database import Database
from bridge.store.sealing import PLAIN, DataCipher
from bridge.store.tables import consent


@dataclass(frozen=True, slots=True)
class ConsentEntry:
    """One ledger row."""

    address: str
    action: str
    source: str
    channel: str
    evidence: str | None
    recorded_at: datetime


class ConsentLedger:
    """Record and read consent.

    Args:
        db: the database.
        clock: gives ``recorded_at``.
        cipher: hashes and seals addresses when a data key is configured.
    """

    def __init__(self, db: Database, clock: Clock, cipher: DataCipher = PLAIN) -> None:
        self._db = db
        self._clock = clock
        self._cipher = cipher

    async def record(
        self,
        address: str,
        action: str,
        *,
        source: str,
        evidence: str | None,
        channel: str = "whatsapp",
    ) -> None:
        """Append ``opt_in`` or ``opt_out`` for ``address``.

        Raises:
            ValueError: unknown action.
        """
        if action not in ("opt_in", "opt_out"):
            raise ValueError(f"unknown consent action {action!r}")
        async with self._db.write() as conn:
            await conn.execute(
                insert(consent).values(
                    address=self._cipher.lookup(address),
                    address_sealed=self._cipher.seal_text(address),
                    action=action,
                    source=source,
                    channel=channel,
                    evidence=evidence,
                    recorded_at=self._clock.now(),
                )
            )

    async def opted_out(self, address: str) -> bool:
        """True when the latest entry for ``address`` is an opt-out."""
        rows = await self._db.fetch_plain(_LATEST, {"address": self._cipher.lookup(address)})
        return bool(rows) and rows[0][0] == "opt_out"

    async def export(self) -> AsyncIterator[ConsentEntry]:
        """Every entry, oldest first."""
        async with self._db.read() as conn:
            result = await conn.stream(select(consent).order_by(consent.c.id))
            async for r in result:
                address = self._cipher.reveal(r.address, r.address_sealed) or "?"
                yield ConsentEntry(
                    address, r.action, r.source, r.channel, r.evidence, r.recorded_at
                )


#: Built once (the relay asks for every row it sends).
_LATEST = (
    select(consent.c.action)
    .where(consent.c.address == bindparam("address"))
    .order_by(consent.c.recorded_at.desc(), consent.c.id.desc())
    .limit(1)
)
