"""``/webhooks/whatsapp``: Meta's verification handshake and the signed POST intake.

Implements reference whatsapp.md §3.1 (GET verification) and §3.2 (POST: signature over the raw
bytes, store before acknowledging, answer 200 fast). The order on POST is fixed:

1. check ``X-Hub-Signature-256`` over the raw body in constant time: mismatch → 401, nothing
   kept;
2. translate the body (pure) and store it raw with its translation through
   ``EventSink.ingest``; an unreadable but signed body is stored in quarantine (a fatal
   problem) and still answered 200, because any other answer makes Meta retry for 7 days;
3. answer 200 with a small JSON body; if the store is down (``StoreUnavailable``) answer 503 so
   Meta retries later.
"""

from __future__ import annotations

__all__ = ["MAX_BODY_BYTES", "WEBHOOK_PATH", "webhook_routes"]

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bridge.domain import InboundMessage, payload_hash
from bridge.errors import StoreUnavailable
from bridge.logging import get_logger
from bridge.ports import EventSink
from bridge.whatsapp._channel import WhatsAppChannel
from bridge.whatsapp._webhook import (
    SIGNATURE_HEADER,
    first_phone_number_id,
    parse_webhook_body,
    verify_signature,
)

#: The path Meta is configured to call.
WEBHOOK_PATH = "/webhooks/whatsapp"
#: Meta's payloads are at most 3 MB (reference §3.2); anything far larger is not Meta.
MAX_BODY_BYTES = 8 * 1024 * 1024


def webhook_routes(
    channel: WhatsAppChannel,
    sink: EventSink,
    *,
    verify_token: str | None,
    app_secret: bytes | None,
) -> list[Route]:
    """The Starlette routes for ``/webhooks/whatsapp``.

    Args:
        channel: the channel (its clock stamps receive times).
        sink: where raw bodies and their translations are stored.
        verify_token: the token Meta echoes in GET verification; None refuses every GET.
        app_secret: the Meta app secret; None accepts unsigned POSTs (sandbox only).

    Returns:
        One GET and one POST route on :data:`WEBHOOK_PATH`.
    """
    log = get_logger(connector="whatsapp")

    async def verify(request: Request) -> Response:
        params = request.query_params
        mode = params.get("hub.mode")
        token = params.get("hub.verify_token") or ""
        challenge = params.get("hub.challenge")
        if (
            verify_token
            and mode == "subscribe"
            and challenge is not None
            and hmac.compare_digest(token.encode(), verify_token.encode())
        ):
            return PlainTextResponse(challenge)
        log.warning("whatsapp.webhook.verification_refused", mode=mode)
        return PlainTextResponse("forbidden", status_code=403)

    async def receive(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        if app_secret is not None and not verify_signature(
            app_secret, body, request.headers.get(SIGNATURE_HEADER)
        ):
            log.warning("whatsapp.webhook.bad_signature", size=len(body))
            return JSONResponse({"error": "invalid signature"}, status_code=401)
        # Signature checked above with this route's secret; the parse is pure and never raises.
        translation = parse_webhook_body(body, received_at=channel.clock.now())
        source_id = payload_hash(body)
        message = InboundMessage(
            connector="whatsapp",
            sender=first_phone_number_id(body) or "unknown",
            source_id=source_id,
            payload=body,
            translation=translation,
            content_type="application/json",
        )
        try:
            outcome = await sink.ingest(message)
        except StoreUnavailable:
            log.error("whatsapp.webhook.store_unavailable", source_id=source_id)
            return JSONResponse({"error": "store unavailable"}, status_code=503)
        log.info(
            "whatsapp.webhook.stored",
            source_id=source_id,
            outcome=outcome.value,
            events=len(translation.events),
            problems=len(translation.problems),
        )
        return JSONResponse({"status": outcome.value})

    return [
        Route(WEBHOOK_PATH, verify, methods=["GET"], name="whatsapp_webhook_verify"),
        Route(WEBHOOK_PATH, receive, methods=["POST"], name="whatsapp_webhook_receive"),
    ]
