"""Operator commands for clinic staff and the EHR team: handoff, consent, report.

Every change an operator makes is written to the audit log with the actor ``operator:cli`` (or
the name in ``BRIDGE_OPERATOR``), so "who released this conversation" has an answer.
"""

from __future__ import annotations

__all__ = ["consent_app", "handoff_app", "register", "templates_app"]

import csv
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bridge.cli_support import (
    RET_CONFIG,
    ConfigOption,
    fail,
    load,
    out,
    run_async,
    store_cipher,
    with_db,
)
from bridge.ports import SystemClock

handoff_app = typer.Typer(
    help="Conversations a person has taken over: list them, answer a patient, give one back "
    "to the bot.",
    no_args_is_help=True,
)
consent_app = typer.Typer(help="The opt-in / opt-out ledger.", no_args_is_help=True)

Operator = Annotated[
    str,
    typer.Option(
        "--operator",
        envvar="BRIDGE_OPERATOR",
        help="Who is acting, for the audit log (a name or staff id, not a patient's).",
    ),
]


@handoff_app.command("list")
def handoff_list(
    config: ConfigOption = None,
) -> None:
    """List conversations waiting for a person, oldest first, with the reason."""
    from bridge.store.conversations import Conversations

    settings = load(config)

    async def body(db: Any) -> Any:
        cipher = await store_cipher(db, settings)
        return await Conversations(db, SystemClock(), cipher=cipher).in_handoff()

    rows = run_async(lambda: with_db(settings, body))
    table = Table("address", "reason", "since", "last patient message")
    for c in rows:
        table.add_row(
            c.address,
            c.handoff_reason or "-",
            c.updated_at.isoformat(),
            c.last_inbound_at.isoformat() if c.last_inbound_at else "-",
        )
    out.print(table)


@handoff_app.command("reply")
def handoff_reply(
    address: Annotated[str, typer.Argument(help="The patient's WhatsApp number, E.164 (+57...).")],
    text: Annotated[str, typer.Argument(help="What to send, as you would type it in WhatsApp.")],
    operator: Operator = "operator:cli",
    config: ConfigOption = None,
) -> None:
    """Send a free-text answer to a patient (only within 24 h of their last message)."""
    from bridge.engine.planner import message_row
    from bridge.store import AuditLog, SqlOutbox
    from bridge.store.conversations import Conversations

    settings = load(config)

    async def body(db: Any) -> str | None:
        clock = SystemClock()
        cipher = await store_cipher(db, settings)
        conversation = await Conversations(db, clock, cipher=cipher).get(address)
        last = conversation.last_inbound_at if conversation else None
        if last is None or clock.now() - last >= timedelta(hours=24):
            return (
                "the patient has not written in the last 24 hours; WhatsApp only allows "
                "templates now (their next message reopens the window)"
            )
        now = clock.now()
        [row_id] = await SqlOutbox(db, clock, cipher).enqueue(
            [
                message_row(
                    kind="reply",
                    message="staff_text",
                    address=address,
                    key=f"staff_text|{cipher.lookup(address)}|{now.isoformat()}",
                    due_at=now,
                    language=None,
                    subject=None,
                    text=text,
                )
            ]
        )
        await AuditLog(db, clock).append(
            operator, "handoff.reply", cipher.address_subject(address), {"outbox_id": row_id}
        )
        return None

    problem = run_async(lambda: with_db(settings, body))
    if problem:
        raise fail(RET_CONFIG, problem)
    out.print("queued; the daemon sends it within a second")


@handoff_app.command("release")
def handoff_release(
    address: Annotated[str, typer.Argument(help="The patient's WhatsApp number, E.164.")],
    operator: Operator = "operator:cli",
    config: ConfigOption = None,
) -> None:
    """Give the conversation back to the bot."""
    from bridge.store import AuditLog
    from bridge.store.conversations import Conversations

    settings = load(config)

    async def body(db: Any) -> None:
        clock = SystemClock()
        cipher = await store_cipher(db, settings)
        await Conversations(db, clock, cipher=cipher).release(address)
        await AuditLog(db, clock).append(
            operator, "handoff.release", cipher.address_subject(address)
        )

    run_async(lambda: with_db(settings, body))
    out.print("released: the bot answers this patient again")


@consent_app.command("export")
def consent_export(
    config: ConfigOption = None,
) -> None:
    """Write the whole consent ledger as CSV to standard output, for the EHR team."""
    from bridge.store.consent import ConsentLedger

    settings = load(config)

    async def body(db: Any) -> list[Any]:
        ledger = ConsentLedger(db, SystemClock(), await store_cipher(db, settings))
        return [entry async for entry in ledger.export()]

    entries = run_async(lambda: with_db(settings, body))
    writer = csv.writer(sys.stdout)
    writer.writerow(["address", "action", "source", "channel", "evidence", "recorded_at"])
    for e in entries:
        writer.writerow(
            [e.address, e.action, e.source, e.channel, e.evidence or "", e.recorded_at.isoformat()]
        )


def report(
    days: Annotated[int, typer.Option(help="Period: the last N days (ignored with --since).")] = 7,
    since: Annotated[datetime | None, typer.Option(help="Start of the period (UTC).")] = None,
    until: Annotated[datetime | None, typer.Option(help="End of the period (UTC).")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV instead of a table.")] = False,
    config: ConfigOption = None,
) -> None:
    """Per clinic: messages sent, delivered, read, failed by reason; decisions; opt-outs;
    handoffs; median minutes from reminder to decision."""
    from bridge.store.reports import build_report

    settings = load(config)
    end = until.replace(tzinfo=UTC) if until else datetime.now(UTC)
    start = since.replace(tzinfo=UTC) if since else end - timedelta(days=days)

    async def body(db: Any) -> Any:
        return await build_report(db, start, end, await store_cipher(db, settings))

    reports = run_async(lambda: with_db(settings, body))
    rows = [r.row() for r in reports]
    columns = list(rows[0]) if rows else ["clinic", "sent", "delivered", "read", "failed"]
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        return
    table = Table(
        *columns, title=f"bridge report {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC"
    )
    for row in rows:
        table.add_row(*(str(row[c]) for c in columns))
    out.print(table)


def register(app: typer.Typer) -> None:
    """Attach these commands to the main ``bridge`` app."""
    app.add_typer(handoff_app, name="handoff")
    app.add_typer(templates_app, name="templates")
    app.add_typer(consent_app, name="consent")
    app.command("report")(report)


templates_app = typer.Typer(
    help="WhatsApp templates: read them from the WhatsApp Business Account and check that "
    "every message the bridge sends matches an approved template.",
    no_args_is_help=True,
)


def _mappings(settings: Any) -> Any:
    from bridge.engine.mappings import MappingSet

    folder = settings.engine.mappings_dir
    return MappingSet.load(Path(folder)) if folder else MappingSet.default()


def _print_mismatches(mismatches: list[Any]) -> None:
    table = Table("template", "language", "problem", "expected", "found")
    for m in mismatches:
        table.add_row(m.name, m.language, m.kind, m.expected, m.found)
    out.print(table)


@templates_app.command("sync")
def templates_sync(config: ConfigOption = None) -> None:
    """Read the account's templates into the store, then check the mappings against them.

    Exits 1 when a mapping has no matching approved template.
    """
    from contextlib import AsyncExitStack

    from bridge.bootstrap import load_plugins
    from bridge.engine.templates import TemplateStatuses
    from bridge.logging import get_logger
    from bridge.store import AuditLog
    from bridge.store.kv import KvState
    from bridge.whatsapp import sync_templates

    settings = load(config)
    specs = _mappings(settings).template_specs()

    async def body(db: Any) -> tuple[int, list[Any]]:
        clock = SystemClock()
        _, channels = load_plugins(settings, clock, db)
        channel = channels.get("whatsapp")
        if channel is None:
            raise fail(RET_CONFIG, "no WhatsApp channel configured ([bridge] channel)")
        async with AsyncExitStack() as stack:
            await channel.start(stack)  # type: ignore[attr-defined]
            templates, mismatches = await sync_templates(channel.client, specs)  # type: ignore[attr-defined]
        statuses = TemplateStatuses(
            KvState(db, clock, "templates"), clock, AuditLog(db, clock), get_logger()
        )
        await statuses.record_sync(templates)
        return len(templates), mismatches

    count, mismatches = run_async(lambda: with_db(settings, body))
    out.print(f"read {count} template(s) from the account")
    if mismatches:
        _print_mismatches(mismatches)
        raise typer.Exit(1)
    out.print("[green]every mapped message has its approved template[/]")


@templates_app.command("check")
def templates_check(config: ConfigOption = None) -> None:
    """Compare every mapping with the templates read by the last sync; exit 1 on a mismatch."""
    from bridge.engine.templates import TemplateStatuses
    from bridge.logging import get_logger
    from bridge.store import AuditLog
    from bridge.store.kv import KvState
    from bridge.whatsapp import check_templates

    settings = load(config)
    specs = _mappings(settings).template_specs()

    async def body(db: Any) -> list[Any] | None:
        clock = SystemClock()
        statuses = TemplateStatuses(
            KvState(db, clock, "templates"), clock, AuditLog(db, clock), get_logger()
        )
        snapshot = await statuses.snapshot()
        return None if snapshot is None else check_templates(specs, snapshot)

    mismatches = run_async(lambda: with_db(settings, body))
    if mismatches is None:
        raise fail(RET_CONFIG, "no templates stored yet: run 'bridge templates sync' first")
    if mismatches:
        _print_mismatches(mismatches)
        raise typer.Exit(1)
    out.print(f"[green]{len(specs)} mapped template(s) match the account[/]")
