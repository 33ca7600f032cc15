"""The ``bridge`` command: run the daemon, check it, look inside it, fix things by id.

Written for hospital IT: every command has help text that says what it does and what it
touches; errors are one clear message and a named exit code, never a traceback.

Exit codes (⟵ dramatiq ``cli.py``): ``RET_OK`` 0, ``RET_KILLED`` 1 (unexpected failure),
``RET_CONFIG`` 2 (configuration, or unreadable input to ``inspect``), ``RET_CONNECT`` 3
(database or port unavailable), ``RET_PLUGIN`` 4 (a plugin is missing or broken).
"""

from __future__ import annotations

__all__ = ["app", "main"]

import importlib
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.table import Table

from bridge import __version__
from bridge.cli_ops import register as register_operator_commands
from bridge.cli_support import (
    RET_CONFIG,
    RET_KILLED,
    RET_OK,
    RET_PLUGIN,
    ConfigOption,
    fail,
    load,
    out,
    run_async,
    setup_logging,
    with_db,
)
from bridge.errors import ConfigError, PluginError
from bridge.logging import get_logger
from bridge.sandbox.cli import app as sandbox_app

app = typer.Typer(
    name="bridge",
    help="The WhatsApp ⇄ EHR bridge: HL7 v2 and FHIR R4 in, WhatsApp reminders and result "
    "notices out, patients' answers written back to the scheduling system.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(
    help="The database: create or upgrade its schema, show its version, seal patient data "
    "with a data key.",
    no_args_is_help=True,
)
outbox_app = typer.Typer(
    help="Planned and sent messages: list them, retry failed ones by id.", no_args_is_help=True
)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(outbox_app, name="outbox")
app.add_typer(audit_app, name="audit")
register_operator_commands(app)
app.add_typer(sandbox_app, name="sandbox")


@app.command("demo")
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo's data folder afterwards.")] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where the demo keeps its throw-away database (default: a temporary folder)."
        ),
    ] = None,
) -> None:
    """The whole loop on this machine in under a minute: a simulated HIS books appointments over
    MLLP, simulated patients confirm, cancel, reschedule, opt out and ask for a person on the
    WhatsApp sandbox, and the `bridge report` table is read back from the database."""
    from bridge.demo import demo_command

    raise typer.Exit(demo_command(keep=keep, data_dir=data_dir))


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the bridge daemon (HTTP, connectors, relay) until SIGTERM or Ctrl-C.

    Migrates the database first unless migrate_on_start is off. Exits 0 after a clean stop.
    Under systemd (Type=notify) it reports ready once it serves.
    """
    import os

    from bridge.daemon import serve
    from bridge.systemd import Notifier

    settings = load(config)
    setup_logging(settings)
    notifier = Notifier(os.environ.get("NOTIFY_SOCKET"))
    code = run_async(lambda: serve(settings, get_logger(), notifier=notifier))
    raise typer.Exit(code)


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate the configuration and every enabled plugin's section; list all problems."""
    from bridge.bootstrap import load_plugins
    from bridge.ports import SystemClock

    settings = load(config)
    try:
        load_plugins(settings, SystemClock())
    except ConfigError as exc:
        raise fail(RET_CONFIG, str(exc)) from None
    except PluginError as exc:
        raise fail(RET_PLUGIN, str(exc)) from None
    url = settings.sqlalchemy_url
    if url.startswith("sqlite") and not Path(url.split(":///", 1)[1]).exists():
        sealing = "no database yet"  # checking must not create one
    else:
        sealing = run_async(lambda: _data_key_state(settings))
    out.print(
        f"[green]configuration OK[/] ({settings.source}); database "
        f"{'PostgreSQL' if 'postgresql' in settings.sqlalchemy_url else 'SQLite'}, "
        f"connectors: {', '.join(settings.connectors) or 'none'}, "
        f"channel: {settings.channel or 'none'}; {sealing}"
    )


async def _data_key_state(settings: Any) -> str:
    """How the configured data key stands with the database, when there is one to ask.

    Raises:
        ConfigError: the database holds sealed data and the key is missing or another one.
    """
    from bridge.store import Database
    from bridge.store.data_key import KeyStatus, key_status
    from bridge.store.migrate import current_revision
    from bridge.store.sealing import DATA_KEY, DataCipher

    cipher = DataCipher.from_secret(settings.secrets.get(DATA_KEY))
    keyed = "data key set" if cipher.enabled else "no data key"
    db = Database(settings.sqlalchemy_url)
    try:
        if not await db.ping():
            return f"{keyed} (database not reachable: not checked against it)"
        if await current_revision(db) is None:
            return f"{keyed} (empty database)"
        status = await key_status(db, cipher)
    finally:
        await db.dispose()
    return {
        KeyStatus.PLAIN: "patient data stored plain (no data key)",
        KeyStatus.SEALED: "patient data sealed with the configured key",
        KeyStatus.UNSEALED: "data key set, database not sealed yet (sealed at the next start, "
        "or run 'bridge db seal')",
    }[status]


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Create the schema or bring it to the version this bridge needs."""
    from bridge.store.migrate import current_revision, head_revision, upgrade

    settings = load(config)

    async def body(db: Any) -> str | None:
        await upgrade(db)
        return await current_revision(db)

    rev = run_async(lambda: with_db(settings, body, check_schema=False))
    out.print(f"database at revision {rev} (head {head_revision()})")


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Show the schema revision of the database and the one this bridge needs."""
    from bridge.store.migrate import current_revision, head_revision

    settings = load(config)
    rev = run_async(lambda: with_db(settings, current_revision, check_schema=False))
    head = head_revision()
    state = "up to date" if rev == head else "needs 'bridge db upgrade'"
    out.print(f"current: {rev or 'empty'}  head: {head}  ({state})")


@db_app.command("seal")
def db_seal(config: ConfigOption = None) -> None:
    """Seal the patient phones, names and payloads of a plain database with BRIDGE_DATA_KEY.

    Stop every daemon on the database first. Rewrites rows in batches and can be run again
    (only what is still plain is converted); prints counts per table, never values. The daemon
    does the same at start when migrate_on_start is on.
    """
    from bridge.ports import SystemClock
    from bridge.store.data_key import seal_database
    from bridge.store.sealing import DATA_KEY, DataCipher

    settings = load(config)
    cipher = DataCipher.from_secret(settings.secrets.get(DATA_KEY))
    if not cipher.enabled:
        raise fail(
            RET_CONFIG,
            f"{DATA_KEY} is not set: nothing to seal with (create a key with 'bridge db keygen' "
            f"and set {DATA_KEY} or {DATA_KEY}_FILE; see README, Encryption at rest)",
        )

    async def body(db: Any) -> Any:
        return await seal_database(db, cipher, SystemClock())

    counts = run_async(lambda: with_db(settings, body))
    out.print(f"sealed {counts.total} row(s): {counts}")


@db_app.command("keygen")
def db_keygen() -> None:
    """Print a new random data key for BRIDGE_DATA_KEY (keep it safe: without it sealed data
    cannot be read)."""
    from bridge.store.sealing import generate_key

    sys.stdout.write(generate_key() + "\n")


@app.command()
def plugins(config: ConfigOption = None) -> None:
    """List installed connector and channel plugins, their versions, and which are enabled."""
    from bridge.plugins import CHANNELS, CONNECTORS, describe

    settings = load(config)
    enabled = set(settings.connectors) | {settings.channel}
    table = Table("group", "name", "enabled", "distribution", "version", "target")
    for group in (CONNECTORS, CHANNELS):
        for info in describe(group):
            table.add_row(
                group,
                info.name,
                "yes" if info.name in enabled else "no",
                info.distribution or "-",
                info.version or "-",
                info.target,
            )
    out.print(table)


@app.command()
def status(config: ConfigOption = None) -> None:
    """Counts by state, quarantine size, and the last inbound and outbound times."""
    from bridge.store.status import status_summary

    settings = load(config)
    summary = run_async(lambda: with_db(settings, status_summary))
    table = Table("what", "state", "count", title="bridge status")
    for state, count in sorted(summary.outbox_by_state.items()):
        table.add_row("outbox", state, str(count))
    for state, count in sorted(summary.inbox_by_state.items()):
        table.add_row("inbound", state, str(count))
    for state, count in sorted(summary.events_by_state.items()):
        table.add_row("events", state, str(count))
    out.print(table)
    out.print(f"quarantined inbound messages: {summary.quarantined}")
    out.print(f"last inbound:  {summary.last_inbound_at or 'never'}")
    out.print(f"last outbound: {summary.last_outbound_at or 'never'}")


@outbox_app.command("list")
def outbox_list(
    config: ConfigOption = None,
    state: Annotated[
        list[str] | None,
        typer.Option(
            help="Only rows in this state (pending, leased, sent, failed, dead, cancelled, held); "
            "repeatable."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="How many rows, newest first.")] = 50,
) -> None:
    """List outbox rows (ids, states, attempts, error codes; never message content)."""
    from bridge.ports import SystemClock
    from bridge.store import SqlOutbox

    settings = load(config)

    async def body(db: Any) -> Any:
        return await SqlOutbox(db, SystemClock()).list(states=state, limit=limit)

    rows = run_async(lambda: with_db(settings, body))
    _print_outbox(rows)


@outbox_app.command("dead")
def outbox_dead(
    config: ConfigOption = None, limit: Annotated[int, typer.Option(help="How many rows.")] = 50
) -> None:
    """List dead-lettered and failed rows with their last error code."""
    outbox_list(config=config, state=["dead", "failed"], limit=limit)


@outbox_app.command("retry")
def outbox_retry(
    ids: Annotated[list[int], typer.Argument(help="Outbox row ids to send again.")],
    config: ConfigOption = None,
) -> None:
    """Requeue failed, dead, held or cancelled rows by id; they are sent on the next tick."""
    from bridge.ports import SystemClock
    from bridge.store import AuditLog, SqlOutbox

    settings = load(config)

    async def body(db: Any) -> int:
        clock = SystemClock()
        count = await SqlOutbox(db, clock).retry(ids)
        await AuditLog(db, clock).append(
            "operator:cli", "outbox.retry", None, {"ids": list(ids), "requeued": count}
        )
        return count

    count = run_async(lambda: with_db(settings, body))
    out.print(f"requeued {count} of {len(ids)} row(s)")


def _print_outbox(rows: list[Any]) -> None:
    table = Table("id", "kind", "state", "attempts", "due", "next attempt", "delivery", "error")
    for r in rows:
        table.add_row(
            str(r.id),
            r.kind,
            r.state,
            str(r.attempts),
            r.due_at.isoformat(),
            r.next_attempt_at.isoformat(),
            r.delivery_status or "-",
            r.last_error_code or "-",
        )
    out.print(table)


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None) -> None:
    """Check the audit log's hash chain; exits 1 and names the first broken row if tampered."""
    from bridge.ports import SystemClock
    from bridge.store import AuditLog

    settings = load(config)

    async def body(db: Any) -> Any:
        return await AuditLog(db, SystemClock()).verify()

    verdict = run_async(lambda: with_db(settings, body))
    if verdict.ok:
        out.print(f"[green]audit log intact[/]: {verdict.rows} row(s) verified")
        return
    raise fail(
        RET_KILLED,
        f"audit log broken at row {verdict.broken_at} "
        f"({verdict.rows} row(s) read): rows were changed or removed",
    )


#: ``bridge inspect`` kinds → the module whose ``inspect(payload, **options)`` translates them.
_INSPECTORS = {
    "hl7": "connectors.hl7v2",
    "fhir": "connectors.fhir",
    "whatsapp": "bridge.whatsapp",
}


@app.command()
def inspect(
    kind: Annotated[str, typer.Argument(help="What the file holds: hl7, fhir or whatsapp.")],
    file: Annotated[Path, typer.Argument(help="The message or webhook body to run through.")],
    tz: Annotated[
        str | None,
        typer.Option(
            "--tz", help="Time zone for times without one (IANA name, e.g. America/Bogota)."
        ),
    ] = None,
    region: Annotated[
        str | None,
        typer.Option(
            "--region",
            help="Default phone region for numbers without a country code (e.g. CO).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show what the bridge would do with one input, using the daemon's own code, no database."""
    module_name = _INSPECTORS.get(kind)
    if module_name is None:
        raise fail(RET_CONFIG, f"unknown kind {kind!r}: use hl7, fhir or whatsapp")
    try:
        payload = file.read_bytes()
    except OSError as exc:
        raise fail(RET_CONFIG, f"cannot read {file}: {exc.strerror}") from None
    translate = importlib.import_module(module_name).inspect
    options: dict[str, Any] = {} if kind == "whatsapp" else {"tz": tz, "region": region}
    translation = translate(payload, **options)
    if translation.fatal:
        reason = "; ".join(p.message for p in translation.problems if p.fatal)
        raise fail(RET_CONFIG, f"{file.name}: {reason}")
    result = translation.marshal()
    if as_json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    for evt in result["events"]:
        out.print(
            f"[bold]{evt['type']}[/] from {evt['source']['connector']} "
            f"message {evt['source']['message_id']}"
        )
        for key in ("appointment", "patient", "result"):
            if evt.get(key):
                out.print(f"  {key}: {evt[key]}")
    for problem in result["problems"]:
        out.print(
            f"[yellow]problem[/] {problem['code']} ({problem['field']}): {problem['message']}"
        )
    if not result["events"] and not result["problems"]:
        out.print("nothing to do for this input")


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"bridge {__version__}")
        raise typer.Exit(RET_OK)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - Ctrl-C outside the daemon
        sys.exit(RET_KILLED)
