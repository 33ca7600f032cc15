"""``bridge demo``: the whole loop on one machine, with nothing to set up, in well under a minute.

What runs (all on 127.0.0.1, on free ports, in a throw-away data dir):

- the real daemon, ``bridge run``, as a child process (:mod:`bridge._demo_daemon`) on SQLite,
  with the HL7 v2 connector and the embedded WhatsApp sandbox;
- a simulated HIS (:mod:`bridge._demo_his`) that books six appointments with ``SIU^S12`` and
  reports one final result with ``ORU^R01`` over real MLLP, and records the decisions the
  bridge writes back;
- six simulated patients (:mod:`bridge._demo_script`) who answer their reminders through the
  sandbox's control API (``POST /_sandbox/reply``): confirm, cancel, reschedule, opt out, ask
  for a person, confirm in free text.

Time is compressed with the engine's own settings, never by patching clocks. The terminal shows
each step as it happens, then the ``bridge report`` table read from the demo database, then a
summary that is checked against that database and against what the HIS received: the demo
exits 0 only when they agree.

Everything shown is synthetic (invented names, fictional ``+57300123xxxx`` numbers). The
daemon's own logs, which carry ids only, go to ``<data dir>/bridge.log``.
"""

from __future__ import annotations

__all__ = ["demo", "demo_command", "run_demo"]

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import httpx
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bridge._demo_daemon import DEMO_TIMEZONE, DemoDaemon, DemoPorts
from bridge._demo_his import HisMessage, MllpSender, SimulatedHis, ack_code, oru_r01, siu_s12
from bridge._demo_script import (
    CAST,
    REMINDER_TEMPLATE,
    RESULTS_TEMPLATE,
    Check,
    Persona,
    check_summary,
)
from bridge.store.reports import ClinicReport

#: Exit codes, as the rest of the ``bridge`` command (bridge.cli_support).
RET_OK, RET_FAILED, RET_CONFIG, RET_CONNECT = 0, 1, 2, 3
#: Exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
RET_INTERRUPTED = 130
#: Seconds the patients' part may take before the demo gives up (the whole demo: < 60 s).
_LOOP_LIMIT = 35.0
#: How often the demo looks at the sandbox's message log.
_POLL_SECONDS = 0.1
#: A simulated patient's reading time before answering, times 1, 2 or 3: long enough to follow
#: on screen, short enough for the whole demo to take seconds.
_THINK_SECONDS = 0.4
#: Attempts at starting the daemon: a free port can be taken between picking and binding.
_START_ATTEMPTS = 3
#: Console width from which the report is printed with its columns side by side.
_WIDE_TABLE = 150
#: Columns of the ``bridge report`` table, as ``bridge report`` prints them.
_REPORT_COLUMNS = (
    "clinic",
    "sent",
    "delivered",
    "read",
    "failed",
    "failed_by_reason",
    "confirmed",
    "cancelled",
    "rescheduled",
    "opt_outs",
    "handoffs",
    "median_reply_min",
)


@dataclass
class _Progress:
    """Where one simulated patient is in their script."""

    persona: Persona
    next_step: int = 0
    answered: bool = False
    results_seen: bool = False

    @property
    def done(self) -> bool:
        results_ok = self.results_seen or not self.persona.gets_result
        return self.next_step == len(self.persona.steps) and self.answered and results_ok


@dataclass
class _Run:
    """One demo run: the console, the clock, and who is where."""

    console: Console
    started: float = field(default_factory=time.monotonic)
    progress: dict[str, _Progress] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    sandbox_messages: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a patient's answer in the background (others keep reading meanwhile)."""
        task = asyncio.create_task(work)
        self.tasks.add(task)

    def raise_failures(self) -> None:
        """Re-raise the error of a finished answer task, if any."""
        for task in [t for t in self.tasks if t.done()]:
            self.tasks.discard(task)
            task.result()

    async def cancel_tasks(self) -> None:
        """Stop answers still waiting (the demo is over)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks.clear()

    def say(self, who: str, to: str, what: str, style: str = "") -> None:
        """Print one step: seconds since the start, clinic wall clock, who to whom, what."""
        elapsed = time.monotonic() - self.started
        clock = datetime.now(UTC).astimezone(ZoneInfo(DEMO_TIMEZONE)).strftime("%H:%M:%S")
        line = Text.assemble(
            (f"{elapsed:5.1f}s {clock} ", "dim"),
            (f"{who:<8}", "bold"),
            f" → {to:<8} ",
            (what, style),
        )
        self.console.print(line, highlight=False, soft_wrap=True)

    def note(self, text: str, style: str = "cyan") -> None:
        """Print a narration line (plain text, never markup)."""
        self.console.print(Text(text, style=style), highlight=False, soft_wrap=True)


def _short(persona: Persona) -> str:
    return persona.patient.given


def _describe(message: dict[str, Any]) -> str:
    """What a patient's phone shows, in one line (synthetic content)."""
    template = message.get("template")
    buttons = [str(b.get("label") or b.get("title") or "") for b in message.get("buttons") or []]
    labels = f" [{' | '.join(b for b in buttons if b)}]" if any(buttons) else ""
    if isinstance(template, dict):
        return f"template {template.get('name')}{labels}"
    text = str(message.get("text") or "").replace("\n", " ")
    if len(text) > 90:
        text = text[:87] + "..."
    kind = message.get("interactive_type")
    return f'{kind + " " if kind else ""}"{text}"{labels}'


def _on_his_message(run: _Run) -> Any:
    def show(message: HisMessage) -> None:
        what = {"SRM^S03": "confirm", "SRM^S04": "cancel", "SRM^S02": "reschedule"}.get(
            message.message_type, "message"
        )
        appointment = next(
            (p.appointment_id for p in CAST if message.mentions(p.appointment_id)), "?"
        )
        run.say(
            "bridge",
            "HIS",
            f"{message.message_type} {what} {appointment}; HIS answers AA",
            style="green",
        )

    return show


async def _start_daemon(
    run: _Run, data_dir: Path, his: SimulatedHis, client: httpx.AsyncClient
) -> DemoDaemon | None:
    """Start ``bridge run``; retry on a port taken meanwhile; None when it would not start."""
    for _attempt in range(_START_ATTEMPTS):
        daemon = DemoDaemon(data_dir, DemoPorts.pick(his.port))
        await daemon.start()
        try:
            code = await daemon.wait_ready(client)
        except TimeoutError:
            code = None
            await daemon.stop()
            run.note("the bridge did not become ready in time", style="red")
            break
        if code is None:
            ports = daemon.ports
            run.say(
                "demo",
                "bridge",
                f"bridge run is up: HTTP :{ports.http}, MLLP :{ports.mllp},"
                f" WhatsApp sandbox :{ports.sandbox}; simulated HIS on :{ports.his}",
            )
            return daemon
        await daemon.stop()
        if code != RET_CONNECT:
            run.note(f"bridge run exited {code}", style="red")
            break
    for line in daemon.log_tail():
        run.note(f"  {line}", style="dim")
    return None


async def _book(run: _Run, daemon: DemoDaemon) -> bool:
    """The HIS books every appointment and reports one result; True when all were ACKed AA."""
    zone = ZoneInfo(DEMO_TIMEZONE)
    now_local = datetime.now(zone).replace(tzinfo=None, microsecond=0)
    tomorrow = (now_local + timedelta(days=1)).replace(hour=9, minute=0, second=0)
    sender = MllpSender("127.0.0.1", daemon.ports.mllp)
    ok = True
    try:
        for n, persona in enumerate(CAST, start=1):
            start = tomorrow + timedelta(minutes=persona.slot)
            frame = siu_s12(
                control_id=f"DEMO-S12-{n}",
                appointment_id=persona.appointment_id,
                start=start,
                patient=persona.patient,
                location=persona.location,
                sent_at=now_local,
            )
            code = ack_code(await sender.send(frame))
            ok = ok and code == "AA"
            run.say(
                "HIS",
                "bridge",
                f"SIU^S12 books {persona.appointment_id} for "
                f"{persona.patient.name}, tomorrow {start:%H:%M} at {persona.location}; "
                f"ACK {code}",
                style="" if code == "AA" else "red",
            )
        for n, persona in enumerate((p for p in CAST if p.gets_result), start=1):
            frame = oru_r01(
                control_id=f"DEMO-R01-{n}",
                filler_id=f"DEMO-LAB-{n}",
                patient=persona.patient,
                sent_at=now_local,
            )
            code = ack_code(await sender.send(frame))
            ok = ok and code == "AA"
            run.say(
                "HIS",
                "bridge",
                f"ORU^R01 final lab result DEMO-LAB-{n} for {persona.patient.name}; ACK {code}",
                style="" if code == "AA" else "red",
            )
    finally:
        await sender.aclose()
    return ok


async def _play(
    run: _Run, daemon: DemoDaemon, his: SimulatedHis, client: httpx.AsyncClient
) -> bool:
    """Show what reaches each phone and make each patient answer; True when all finished."""
    by_digits = {p.digits: p for p in CAST}
    run.progress = {p.digits: _Progress(p) for p in CAST}
    deadline = time.monotonic() + _LOOP_LIMIT
    while time.monotonic() < deadline:
        answer = await client.get(f"{daemon.sandbox_url}/_sandbox/messages")
        answer.raise_for_status()
        messages: list[dict[str, Any]] = answer.json()["data"]
        run.sandbox_messages = len(messages)
        for message in messages:
            if message["id"] in run.seen:
                continue
            run.seen.add(message["id"])
            persona = by_digits.get(str(message.get("wa_id") or message.get("to", "")).lstrip("+"))
            if persona is None:
                continue
            run.say("bridge", _short(persona), _describe(message))
            _react(run, daemon, client, run.progress[persona.digits], message)
        run.raise_failures()
        if all(p.done for p in run.progress.values()) and _his_complete(his):
            return True
        await asyncio.sleep(_POLL_SECONDS)
    return False


async def _answer(
    run: _Run,
    daemon: DemoDaemon,
    client: httpx.AsyncClient,
    persona: Persona,
    says: str,
    body: dict[str, str],
) -> None:
    """A patient takes a moment to read, then answers through the sandbox."""
    await asyncio.sleep(_THINK_SECONDS * (1 + CAST.index(persona) % 3))
    reply = await client.post(f"{daemon.sandbox_url}/_sandbox/reply", json=body)
    reply.raise_for_status()
    run.say(_short(persona), "bridge", says, style="yellow")


def _his_complete(his: SimulatedHis) -> bool:
    return all(
        any(m.message_type == p.his_message and m.mentions(p.appointment_id) for m in his.messages)
        for p in CAST
        if p.his_message is not None
    )


def _react(
    run: _Run,
    daemon: DemoDaemon,
    client: httpx.AsyncClient,
    progress: _Progress,
    message: dict[str, Any],
) -> None:
    """The patient reads one message and, when their script says so, answers it (soon)."""
    persona = progress.persona
    template = message.get("template")
    name = template.get("name") if isinstance(template, dict) else None
    if name == RESULTS_TEMPLATE:
        progress.results_seen = True
        return
    if progress.next_step < len(persona.steps):
        step = persona.steps[progress.next_step]
        if step.matches(message):
            progress.next_step += 1
            # a tap answers the message that showed the button; a typed text answers nothing
            body = step.reply_body(
                persona.patient.phone, message["id"] if step.button is not None else None
            )
            run.spawn(_answer(run, daemon, client, persona, step.says, body))
        return
    if name != REMINDER_TEMPLATE:
        progress.answered = True
        run.note(f"{'':15}✓ {persona.patient.name}: {persona.result}")


async def _settle(daemon: DemoDaemon, client: httpx.AsyncClient) -> None:
    """Let the sandbox deliver its last status webhooks, so the table shows reads too."""
    try:
        await client.post(
            f"{daemon.sandbox_url}/_sandbox/drain", params={"timeout": "3"}, timeout=5.0
        )
    except httpx.HTTPError:
        return
    # the webhooks are stored; give the event processor a moment to apply them
    await asyncio.sleep(0.5)


async def _report(run: _Run, daemon: DemoDaemon, since: datetime) -> list[ClinicReport]:
    """``build_report`` on the demo database, printed with ``bridge report``'s columns."""
    from bridge.store import Database
    from bridge.store.reports import build_report

    until = datetime.now(UTC) + timedelta(minutes=1)
    db = Database(daemon.database_url)
    try:
        reports = await build_report(db, since, until)
    finally:
        await db.dispose()
    title = f"bridge report {since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC"
    caption = (
        f'read from {daemon.data_dir / "bridge.db"}; clinic "-": messages tied to no '
        "appointment (acknowledgements)"
    )
    rows = [rep.row() for rep in reports]
    if run.console.width >= _WIDE_TABLE:
        table = Table(*_REPORT_COLUMNS, title=title, caption=caption)
        for row in rows:
            table.add_row(*(str(row[c]) for c in _REPORT_COLUMNS))
    else:
        # the same figures turned on their side: twelve columns do not fit a narrow terminal
        table = Table("figure", *(str(row["clinic"]) for row in rows), title=title, caption=caption)
        for column in _REPORT_COLUMNS[1:]:
            table.add_row(column, *(str(row[column]) for row in rows))
    run.console.print(table)
    return reports


def _print_checks(run: _Run, checks: list[Check]) -> None:
    """The summary: each figure as the demo did it and as the database (or HIS) has it."""
    table = Table(
        "figure",
        "the demo did",
        "found",
        "where",
        "",
        title="summary, checked",
        title_justify="left",
    )
    for check in checks:
        verdict = Text("ok", style="green") if check.ok else Text("MISMATCH", style="bold red")
        table.add_row(check.label, str(check.expected), str(check.found), check.source, verdict)
    run.console.print(table)


def _stop_on_sigterm() -> None:
    """SIGTERM ends the demo like Ctrl-C: the daemon is stopped, never left running."""
    task = asyncio.current_task()
    if task is None:  # pragma: no cover - always called from a task
        return
    # not in the main thread (or not on Unix): no handler, the default applies
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


async def run_demo(console: Console, *, data_dir: Path) -> int:
    """Run the demo in ``data_dir`` (which must hold no database yet).

    Args:
        console: where the steps, the report and the summary are printed.
        data_dir: the demo's data dir; the config, database and daemon log are written there.

    Returns:
        0 when the loop completed and the summary matches the database; 1 when it did not
        (timeout, lost contact, mismatch, unclean stop); 3 when the daemon could not start.
    """
    run = _Run(console=console)
    since = datetime.now(UTC) - timedelta(minutes=1)
    _stop_on_sigterm()
    console.print(
        Text.assemble(
            ("bridge demo", "bold"),
            ": a simulated HIS and six simulated patients, the real daemon in between. Synthetic "
            "data only. Time compressed with the engine's settings: reminders 72 h before, so "
            "tomorrow's bookings are due at once; no quiet hours; 0.5 s between two messages to "
            "one patient.",
        )
    )
    his = SimulatedHis(on_message=_on_his_message(run))
    await his.start()
    daemon: DemoDaemon | None = None
    completed = False
    code: int | None = None
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            daemon = await _start_daemon(run, data_dir, his, client)
            if daemon is None:
                return RET_CONNECT
            try:
                completed = await _book(run, daemon) and await _play(run, daemon, his, client)
            except (httpx.HTTPError, OSError, TimeoutError) as exc:
                run.note(
                    f"lost contact with the bridge or its sandbox: {type(exc).__name__}",
                    style="red",
                )
            if completed:
                await _settle(daemon, client)
    finally:
        await run.cancel_tasks()
        if daemon is not None:
            code = await daemon.stop()
        await his.aclose()
    if daemon is None:  # pragma: no cover - returned above
        return RET_CONNECT
    run.say(
        "demo",
        "bridge",
        f"SIGTERM: bridge run stopped, exit code {code}",
        style="" if code == 0 else "red",
    )
    if not completed:
        late = [p.persona.patient.given for p in run.progress.values() if not p.done]
        run.note(
            f"the loop did not complete within {_LOOP_LIMIT:.0f} s; still waiting for: "
            f"{', '.join(late) or 'the HIS'}",
            style="red",
        )
    reports = await _report(run, daemon, since)
    checks = check_summary(CAST, reports, his.messages, run.sandbox_messages)
    _print_checks(run, checks)
    for persona in CAST:
        if persona.remark:
            run.note(f"{persona.patient.given}: {persona.remark}", style="")
    ok = completed and code == 0 and all(c.ok for c in checks)
    elapsed = time.monotonic() - run.started
    console.print(
        Text.assemble(
            ("demo OK", "bold green") if ok else ("demo FAILED", "bold red"),
            f" in {elapsed:.1f} s",
        )
    )
    return RET_OK if ok else RET_FAILED


def demo_command(keep: bool = False, data_dir: Path | None = None) -> int:
    """Run ``bridge demo`` and return its exit code.

    Args:
        keep: keep the throw-away data dir (database, config, daemon log) and say where it is.
        data_dir: use this folder instead of a throw-away one (kept); it must hold no
            ``bridge.db`` yet, so the demo's figures are its own.

    Returns:
        0 ok, 1 the loop did not complete or the summary did not match, 2 the data dir is
        not usable, 3 the daemon could not start, 130 interrupted (Ctrl-C, SIGTERM).
    """
    console = Console(highlight=False)
    if not console.is_terminal:
        # piped or captured: room for the whole report table rather than 80 columns
        console.width = _WIDE_TABLE
    if data_dir is not None:
        if (data_dir / "bridge.db").exists():
            console.print(
                Text(
                    f"error: {data_dir} already holds a bridge database; give the "
                    "demo an empty folder",
                    style="red",
                )
            )
            return RET_CONFIG
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            console.print(Text(f"error: cannot create {data_dir}: {exc.strerror}", style="red"))
            return RET_CONFIG
        folder, throwaway = data_dir.resolve(), False
    else:
        folder, throwaway = Path(tempfile.mkdtemp(prefix="bridge-demo-")), True
    try:
        code = asyncio.run(run_demo(console, data_dir=folder))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print(Text("demo interrupted; the bridge it started was stopped", style="red"))
        code = RET_INTERRUPTED
    finally:
        if throwaway and not keep:
            shutil.rmtree(folder, ignore_errors=True)
    if not throwaway or keep:
        console.print(
            Text(
                f"demo data kept in {folder}: the database, the config and the daemon's log "
                f"(look inside with: bridge status --config {folder / 'bridge.toml'})"
            )
        )
    return code


def demo(
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Keep the demo's data dir (database, config, daemon log)."),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            file_okay=False,
            help="Run in this empty folder instead of a throw-away one (kept).",
        ),
    ] = None,
) -> None:
    """The whole loop on this machine in under a minute: a simulated HIS books six
    appointments over MLLP, simulated patients answer on the WhatsApp sandbox, decisions
    reach the HIS; ends with the report read from the database, checked."""
    raise typer.Exit(demo_command(keep=keep, data_dir=data_dir))
