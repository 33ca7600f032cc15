"""The database and its data key: which key sealed it, and sealing a database that was plain.

A database sealed with a key records that key's *check value* (derived from the key, not
secret) in ``kv``. Every start compares it with the configured key, so a daemon started without
the key, or with another one, refuses to run instead of writing plain and sealed rows side by
side or failing on every patient it reads.

:func:`seal_database` (``bridge db seal``, or the daemon's start when ``migrate_on_start`` is on)
turns a plain database into a sealed one: phones become lookup hashes with a sealed companion,
names and payloads are sealed. It marks the database first (so no keyless daemon starts on a
half-sealed database), converts in batches, then marks it done; running it again converts
only what is still plain, and on SQLite it rebuilds the file afterwards so replaced values do
not linger in free pages. Audit rows are left as they are: the log is hash-chained and
append-only, so rows written before the key keep their subjects (see README, Encryption at rest).
"""

from __future__ import annotations

__all__ = ["KeyStatus", "SealCounts", "ensure_data_key", "key_status", "seal_database"]

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, Table, bindparam, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from structlog.typing import FilteringBoundLogger

from bridge.errors import ConfigError, ConfigProblem
from bridge.ports import Clock
from bridge.store.database import Database
from bridge.store.sealing import (
    DATA_KEY,
    HASH_PREFIX,
    DataCipher,
    is_hashed,
    is_sealed,
    is_sealed_json,
)
from bridge.store.tables import appointment, consent, conversation, event, inbox, kv, outbox

#: The ``kv`` row naming the key that sealed the database: ``"<check value> <state>"``.
KEY_ROW = "bridge:data-key"
#: Rows converted per transaction: small enough not to hold SQLite's writer for long.
BATCH = 500


class KeyStatus(StrEnum):
    """How the database stands with the configured key."""

    #: no key configured and the database was never sealed
    PLAIN = "plain"
    #: the configured key sealed the database
    SEALED = "sealed"
    #: a key is configured but the database is not (fully) sealed yet
    UNSEALED = "unsealed"


@dataclass
class SealCounts:
    """Rows converted per table by :func:`seal_database` (counts only, never values)."""

    tables: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows converted in all tables."""
        return sum(self.tables.values())

    def __str__(self) -> str:
        return ", ".join(f"{name} {count}" for name, count in self.tables.items())


def _problem(reason: str) -> ConfigError:
    return ConfigError([ConfigProblem("environment", DATA_KEY, reason)])


async def _stored(db: Database) -> tuple[str, str] | None:
    async with db.read() as conn:
        value = (
            await conn.execute(select(kv.c.value).where(kv.c.name == KEY_ROW))
        ).scalar_one_or_none()
    if value is None:
        return None
    check, _, state = str(value).partition(" ")
    return check, state


async def key_status(db: Database, cipher: DataCipher) -> KeyStatus:
    """Compare the configured key with the one that sealed the database.

    Raises:
        ConfigError: the database holds sealed data and no key, or another key, is configured.
    """
    stored = await _stored(db)
    if stored is None:
        return KeyStatus.UNSEALED if cipher.enabled else KeyStatus.PLAIN
    check, state = stored
    if not cipher.enabled:
        raise _problem(
            "the database holds sealed patient data but no data key is configured: set "
            f"{DATA_KEY} (or {DATA_KEY}_FILE) to the key it was sealed with"
        )
    if check != cipher.check_value:
        raise _problem(
            f"not the key this database was sealed with (database key id {check[:8]}, "
            f"configured key id {(cipher.check_value or '')[:8]}); sealed data cannot be "
            "read with another key"
        )
    return KeyStatus.SEALED if state == "sealed" else KeyStatus.UNSEALED


async def ensure_data_key(
    db: Database,
    cipher: DataCipher,
    clock: Clock,
    *,
    seal: bool,
    log: FilteringBoundLogger | None = None,
) -> KeyStatus:
    """At start: refuse a missing or wrong key; seal a plain database when allowed.

    Args:
        db: the database, migrated.
        cipher: the configured key's cipher.
        clock: for the ``kv`` row.
        seal: seal a database that is not sealed yet (``migrate_on_start``); otherwise refuse.
        log: where the sealing's counts go.

    Raises:
        ConfigError: wrong or missing key, or an unsealed database and ``seal`` off.
    """
    status = await key_status(db, cipher)
    if status is not KeyStatus.UNSEALED:
        return status
    if not seal:
        raise _problem(
            "a data key is configured but the database is not sealed yet: run 'bridge db seal' "
            "(or turn migrate_on_start on)"
        )
    counts = await seal_database(db, cipher, clock)
    if log is not None:
        log.info("data_key.sealed", rows=counts.total, tables=str(counts))
    return KeyStatus.SEALED


async def seal_database(
    db: Database, cipher: DataCipher, clock: Clock, *, batch: int = BATCH
) -> SealCounts:
    """Seal every plain phone, name and payload with ``cipher``'s key; idempotent.

    Stop every daemon on the database first (``bridge db seal``); at a daemon's start this runs
    before anything else uses the database.

    Raises:
        ValueError: ``cipher`` has no key.
        ConfigError: the database was sealed with another key.
    """
    if not cipher.enabled:
        raise ValueError("sealing needs a data key")
    await key_status(db, cipher)  # refuses another key
    await _mark(db, cipher, clock, "sealing")
    counts = SealCounts()
    converter = _Converter(db, cipher, batch)
    counts.tables["appointment"] = await converter.appointments()
    counts.tables["conversation"] = await converter.addresses(conversation)
    counts.tables["consent"] = await converter.addresses(consent)
    counts.tables["outbox"] = await converter.outbox()
    counts.tables["event"] = await converter.events()
    counts.tables["inbox"] = await converter.inbox()
    await _mark(db, cipher, clock, "sealed")
    if counts.total and db.is_sqlite:
        await _rewrite_sqlite_file(db)
    return counts


async def _rewrite_sqlite_file(db: Database) -> None:
    """Rebuild the SQLite file so the plain values the conversion replaced do not linger: in
    free space (unless SQLite was built with ``SECURE_DELETE``, as Debian's is) or as old page
    images in the WAL of a daemon that keeps running after sealing at its start.

    PostgreSQL keeps old row versions until ``VACUUM FULL`` (README, Encryption at rest).
    """
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None  # noqa: S101 - a pooled aiosqlite connection
        await driver.execute("VACUUM")  # outside any transaction, on the raw connection
        await driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _mark(db: Database, cipher: DataCipher, clock: Clock, state: str) -> None:
    insert = sqlite.insert if db.is_sqlite else postgresql.insert
    value = f"{cipher.check_value} {state}"
    now = clock.now()
    stmt = insert(kv).values(name=KEY_ROW, value=value, updated_at=now)
    async with db.write() as conn:
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["name"], set_={"value": value, "updated_at": now}
            )
        )


def _plain_address(column: Column[Any]) -> Any:
    return column.not_like(f"{HASH_PREFIX}%")


class _Converter:
    """The per-table conversions, each in batches of one transaction."""

    def __init__(self, db: Database, cipher: DataCipher, batch: int) -> None:
        self._db = db
        self._cipher = cipher
        self._batch = batch

    async def _run(
        self,
        table: Table,
        key: Column[Any],
        columns: Sequence[Column[Any]],
        where: Any,
        convert: Callable[[Any], dict[str, Any] | None],
    ) -> int:
        """Walk ``table`` by ``key`` (rows matching ``where``) and update what ``convert`` says.

        ``convert(row)`` returns the new column values, or None when the row is already sealed.
        """
        converted = 0
        last: Any = None
        names = [c.name for c in columns]
        stmt = update(table).where(key == bindparam("b_key"))
        stmt = stmt.values(
            {name: bindparam(f"b_{name}", type_=table.c[name].type) for name in names}
        )
        while True:
            query = select(key, *columns).order_by(key).limit(self._batch)
            if where is not None:
                query = query.where(where)
            if last is not None:
                query = query.where(key > last)
            async with self._db.write() as conn:
                rows = (await conn.execute(query)).all()
                params = []
                for row in rows:
                    values = convert(row)
                    if values is not None:
                        params.append({"b_key": row[0], **{f"b_{n}": values[n] for n in names}})
                if params:
                    await conn.execute(stmt, params)
            converted += len(params)
            if len(rows) < self._batch:
                return converted
            last = rows[-1][0]

    async def appointments(self) -> int:
        cipher = self._cipher
        t = appointment

        def convert(row: Any) -> dict[str, Any] | None:
            address, given = row.address, row.given_name
            plain_address = address is not None and not is_hashed(address)
            if not plain_address and given is None:
                return None
            return {
                "address": cipher.lookup(address) if plain_address else address,
                "address_sealed": cipher.seal_text(address)
                if plain_address
                else row.address_sealed,
                "given_name": None,
                "given_name_sealed": cipher.seal_text(given)
                if given is not None
                else row.given_name_sealed,
            }

        where = or_(
            (t.c.address.is_not(None)) & _plain_address(t.c.address), t.c.given_name.is_not(None)
        )
        return await self._run(
            t,
            t.c.subject_key,
            [t.c.address, t.c.address_sealed, t.c.given_name, t.c.given_name_sealed],
            where,
            convert,
        )

    async def addresses(self, table: Table) -> int:
        """``conversation`` and ``consent``: the address becomes its hash plus its sealed self."""
        cipher = self._cipher
        if table is conversation:
            await self._drop_duplicate_conversations()

        def convert(row: Any) -> dict[str, Any] | None:
            return {
                "address": cipher.lookup(row.address),
                "address_sealed": cipher.seal_text(row.address),
            }

        return await self._run(
            table,
            table.c.id,
            [table.c.address, table.c.address_sealed],
            _plain_address(table.c.address),
            convert,
        )

    async def _drop_duplicate_conversations(self) -> None:
        """A plain conversation whose address already has a hashed one (written after the key
        was set) would collide with it: the hashed, newer one is kept."""
        async with self._db.write() as conn:
            hashed = {
                (r.channel, r.address)
                for r in await conn.execute(
                    select(conversation.c.channel, conversation.c.address).where(
                        conversation.c.address.like(f"{HASH_PREFIX}%")
                    )
                )
            }
            if not hashed:
                return
            plain = (
                await conn.execute(
                    select(conversation.c.id, conversation.c.channel, conversation.c.address).where(
                        _plain_address(conversation.c.address)
                    )
                )
            ).all()
            doomed = [r.id for r in plain if (r.channel, self._cipher.lookup(r.address)) in hashed]
            if doomed:
                await conn.execute(delete(conversation).where(conversation.c.id.in_(doomed)))

    async def outbox(self) -> int:
        cipher = self._cipher
        t = outbox

        def convert(row: Any) -> dict[str, Any] | None:
            recipient, payload, key = row.recipient_key, row.payload, row.idempotency_key
            plain_recipient = recipient is not None and not is_hashed(recipient)
            if not plain_recipient and is_sealed_json(payload):
                return None
            if plain_recipient and recipient in key:
                # `bridge handoff reply` keys name the address
                key = key.replace(recipient, cipher.lookup(recipient))
            return {
                "recipient_key": cipher.lookup(recipient) if plain_recipient else recipient,
                "payload": payload if is_sealed_json(payload) else cipher.seal_json(payload),
                "idempotency_key": key,
                "subject_key": cipher.subject(row.subject_key),
            }

        return await self._run(
            t,
            t.c.id,
            [t.c.recipient_key, t.c.payload, t.c.idempotency_key, t.c.subject_key],
            None,
            convert,
        )

    async def events(self) -> int:
        cipher = self._cipher
        t = event

        def convert(row: Any) -> dict[str, Any] | None:
            subject = cipher.subject(row.subject_key)
            if is_sealed_json(row.payload) and subject == row.subject_key:
                return None
            payload = row.payload if is_sealed_json(row.payload) else cipher.seal_json(row.payload)
            return {"payload": payload, "subject_key": subject}

        return await self._run(t, t.c.seq, [t.c.payload, t.c.subject_key], None, convert)

    async def inbox(self) -> int:
        cipher = self._cipher
        t = inbox

        def convert(row: Any) -> dict[str, Any] | None:
            if is_sealed(row.payload):
                return None
            return {"payload": cipher.seal(bytes(row.payload))}

        return await self._run(t, t.c.id, [t.c.payload], t.c.payload.is_not(None), convert)
