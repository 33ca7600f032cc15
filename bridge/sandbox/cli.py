"""``bridge sandbox``: run the local WhatsApp emulator and act as a patient from the command line.

The lead mounts :data:`app` as ``bridge sandbox``. ``serve`` reads the two secrets from the
environment (``BRIDGE_WHATSAPP_TOKEN``, ``BRIDGE_WHATSAPP_APP_SECRET``) and falls back to the
documented sandbox values, so it runs with no Meta account and no configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn

from bridge.sandbox._app import create_app
from bridge.sandbox._config import (
    DEFAULT_PHONE_NUMBER_ID,
    DEFAULT_WABA_ID,
    SANDBOX_APP_SECRET,
    SANDBOX_TOKEN,
    PatientScript,
    SandboxConfig,
)
from bridge.sandbox._templates import TemplateFileError

__all__ = ["app"]

app = typer.Typer(
    name="sandbox",
    help=(
        "A local stand-in for WhatsApp (Meta's Cloud API) with simulated patients. "
        "Use it to try the bridge without a Meta account: the bridge sends to it exactly as it "
        "would to Meta, and it answers with delivery receipts and patient replies."
    ),
    no_args_is_help=True,
)

_DEFAULT_URL = "http://127.0.0.1:8081"


@app.command(
    help=(
        "Start the WhatsApp sandbox and keep it running until Ctrl+C.\n\n"
        "The access token is read from BRIDGE_WHATSAPP_TOKEN and the app secret (which signs "
        "the webhooks) from BRIDGE_WHATSAPP_APP_SECRET. When they are not set, the sandbox "
        "uses 'sandbox-token' and 'sandbox-app-secret'; give the bridge the same values."
    )
)
def serve(
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. Keep 127.0.0.1: the test controls have no password."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8081,
    webhook_url: Annotated[
        str | None,
        typer.Option(
            help="Where to deliver receipts and patient replies: the bridge's webhook, e.g. "
            "http://127.0.0.1:8080/webhooks/whatsapp. Without it nothing is delivered."
        ),
    ] = None,
    templates: Annotated[
        Path | None,
        typer.Option(
            help="JSON file of message templates (default: the ones shipped with the bridge)."
        ),
    ] = None,
    rate: Annotated[
        float, typer.Option(help="Messages per second allowed before 'rate limit hit' (Meta: 80).")
    ] = 80.0,
    pair_burst: Annotated[
        int,
        typer.Option(help="Messages one patient can receive in a burst before Meta refuses (45)."),
    ] = 45,
    phone_number_id: Annotated[
        str, typer.Option(help="Phone-number id the bridge is configured with.")
    ] = DEFAULT_PHONE_NUMBER_ID,
    waba_id: Annotated[
        str, typer.Option(help="WhatsApp Business Account id the bridge is configured with.")
    ] = DEFAULT_WABA_ID,
    undeliverable: Annotated[
        list[str] | None,
        typer.Option(help="A number that is not on WhatsApp (its messages fail). Repeat for more."),
    ] = None,
    auto_reply_button: Annotated[
        str | None,
        typer.Option(
            help="Make every patient tap this button (e.g. confirm) on the reminder template."
        ),
    ] = None,
    auto_reply_on: Annotated[
        str, typer.Option(help="Template that triggers --auto-reply-button.")
    ] = "appointment_reminder",
    auto_reply_delay_ms: Annotated[
        int, typer.Option(help="How long the simulated patient takes to answer.")
    ] = 2000,
    duplicates: Annotated[
        float, typer.Option(help="Share of receipts delivered twice, as Meta sometimes does (0-1).")
    ] = 0.0,
    reorder: Annotated[
        float, typer.Option(help="Share of messages whose receipts arrive out of order (0-1).")
    ] = 0.0,
    message_log_size: Annotated[
        int,
        typer.Option(help="How many sent messages to remember for 'messages' (about 6 kB each)."),
    ] = 100_000,
    batch_max: Annotated[
        int,
        typer.Option(help="Most receipts per webhook call (Meta batches up to 1000; 1 = none)."),
    ] = 1,
    seed: Annotated[int | None, typer.Option(help="Seed, to repeat a run exactly.")] = None,
) -> None:
    """Run the sandbox with uvicorn until interrupted (help text above).

    Raises:
        typer.Exit: 2 when an option or the template file is invalid.
    """
    token = os.environ.get("BRIDGE_WHATSAPP_TOKEN") or SANDBOX_TOKEN
    app_secret = os.environ.get("BRIDGE_WHATSAPP_APP_SECRET") or SANDBOX_APP_SECRET
    scripts: tuple[PatientScript, ...] = ()
    if auto_reply_button:
        scripts = (
            PatientScript(on=auto_reply_on, button=auto_reply_button, delay_ms=auto_reply_delay_ms),
        )
    try:
        config = SandboxConfig(
            host=host,
            port=port,
            phone_number_id=phone_number_id,
            waba_id=waba_id,
            token=token,
            app_secret=app_secret,
            webhook_url=webhook_url,
            templates_path=templates,
            rate_per_second=rate,
            pair_burst=pair_burst,
            undeliverable=frozenset(undeliverable or ()),
            duplicate_probability=duplicates,
            reorder_probability=reorder,
            batch_max=batch_max,
            message_log_size=message_log_size,
            batch_window_ms=20 if batch_max > 1 else 0,
            scripts=scripts,
            seed=seed,
        )
        asgi = create_app(config)
    except (ValueError, OSError) as exc:
        kind = "templates" if isinstance(exc, TemplateFileError | OSError) else "options"
        typer.echo(f"sandbox: invalid {kind}: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"WhatsApp sandbox on http://{host}:{port} (phone-number id {phone_number_id}, "
        f"WABA {waba_id}); webhooks to {webhook_url or 'nowhere (no --webhook-url)'}",
        err=True,
    )
    uvicorn.run(asgi, host=host, port=port, log_level="warning", access_log=False)


async def _call(method: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.request(method, url, json=body)


def _request(method: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
    try:
        return asyncio.run(_call(method, url, body))
    except httpx.HTTPError as exc:
        typer.echo(f"sandbox not reachable at {url} ({type(exc).__name__})", err=True)
        raise typer.Exit(3) from None


@app.command(
    help=(
        "Act as a patient: tap a button, pick a list option, or type a text. The sandbox sends "
        "the answer to the bridge's webhook, signed like Meta's."
    )
)
def reply(
    to: Annotated[str, typer.Option(help="The patient's phone number, e.g. +573001234567.")],
    button: Annotated[
        str | None,
        typer.Option(
            help="Tap a button of the last message: confirm, reschedule, cancel, or its label."
        ),
    ] = None,
    text: Annotated[str | None, typer.Option(help='Type a message, e.g. "no puedo ir".')] = None,
    row: Annotated[
        str | None, typer.Option(help="Pick an option of the last list, by its id or title.")
    ] = None,
    context_id: Annotated[
        str | None, typer.Option(help="Answer this message (wamid) instead of the last one.")
    ] = None,
    sandbox_url: Annotated[str, typer.Option(help="Where the sandbox runs.")] = _DEFAULT_URL,
) -> None:
    """Ask a running sandbox to send a patient's answer (help text above).

    Raises:
        typer.Exit: 1 when the sandbox refuses, 2 for wrong options, 3 when it is unreachable.
    """
    chosen = [v for v in (button, text, row) if v is not None]
    if len(chosen) != 1:
        typer.echo("give exactly one of --button, --text, --row", err=True)
        raise typer.Exit(2)
    body: dict[str, Any] = {"to": to, "button": button, "text": text, "list_row": row}
    if context_id is not None:
        body["context_id"] = context_id
    resp = _request("POST", f"{sandbox_url.rstrip('/')}/_sandbox/reply", body)
    if resp.status_code != 200:
        reason = resp.json().get("error", resp.text) if resp.content else resp.reason_phrase
        typer.echo(f"sandbox refused the reply: {reason}", err=True)
        raise typer.Exit(1)
    message = resp.json()["message"]
    typer.echo(f"sent {message['type']} reply {message['id']}")


@app.command()
def messages(
    to: Annotated[str | None, typer.Option(help="Only messages to this number.")] = None,
    sandbox_url: Annotated[str, typer.Option(help="Where the sandbox runs.")] = _DEFAULT_URL,
) -> None:
    """Show what the bridge has sent to the sandbox, as JSON."""
    url = f"{sandbox_url.rstrip('/')}/_sandbox/messages"
    if to is not None:
        url = str(httpx.URL(url, params={"to": to}))
    resp = _request("GET", url)
    typer.echo(json.dumps(resp.json()["data"], indent=2, ensure_ascii=False))
