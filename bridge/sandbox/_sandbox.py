"""The sandbox's state and behaviour, independent of HTTP: accept sends, plan statuses, answer as patients.

``create_app`` wraps one :class:`Sandbox` in Starlette routes; tests and the demo reach it through
``app.state.sandbox`` or the control API.

Statuses follow reference whatsapp.md §3.6 and the corpus ``webhook_status_*.json``: ``sent`` then
``delivered`` then ``read``, each with a string timestamp, digits ``recipient_id`` and the echoed
``biz_opaque_callback_data``; ``pricing`` on ``sent`` and on ``delivered`` only; ``conversation``
only for API versions below v24 (Meta omits it from v24 on); ``failed`` carries ``errors[]`` and
neither. Delivery order can be shuffled and statuses duplicated, as Meta does.
"""

from __future__ import annotations

import base64
import itertools
import logging
import random
import re
import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from bridge.sandbox._config import PatientScript, SandboxConfig
from bridge.sandbox._errors import GraphError, webhook_error
from bridge.sandbox._limits import PairLimiter, ThroughputLimiter
from bridge.sandbox._patients import (
    ReplyError,
    choose_button,
    choose_row,
    contact_for,
    script_matches,
)
from bridge.sandbox._stats import Stats
from bridge.sandbox._templates import TemplateRegistry, load_templates
from bridge.sandbox._validate import ReadReceipt, ValidatedSend, validate_request
from bridge.sandbox._webhooks import Update, WebhookDispatcher

__all__ = ["Faults", "Sandbox"]

logger = logging.getLogger("bridge.sandbox")

#: Per-patient maps (conversation ids, last inbound) are emptied beyond this many entries.
_MAX_TRACKED_PATIENTS = 100_000
#: The customer-service window (reference §4.3).
_SERVICE_WINDOW_S = 24 * 3600
#: Webhook versions from v24 on omit ``conversation`` (reference §3.6).
_CONVERSATION_UNTIL_MAJOR = 24
_VERSION = re.compile(r"^v(\d+)\.(\d+)$")


@dataclass(frozen=True, kw_only=True, slots=True)
class Faults:
    """Fault injection on the send endpoint: each call fails one way with these probabilities.

    Args:
        status_429_rate: HTTP 429 with a Graph 130429 body.
        status_5xx_rate: HTTP 500 (code 1), 503 (code 2) or 502 with a plain "Bad Gateway" body.
        timeout_rate: No answer for ``timeout_seconds``, then 504; the message is not accepted.
        reset_rate: The connection is closed in the middle of the answer; not accepted.
        timeout_seconds: How long a timeout fault holds the request.
        seed: Seed of the fault draws (``None``: the sandbox seed).
    """

    status_429_rate: float = 0.0
    status_5xx_rate: float = 0.0
    timeout_rate: float = 0.0
    reset_rate: float = 0.0
    timeout_seconds: float = 30.0
    seed: int | None = None

    def __post_init__(self) -> None:
        rates = (self.status_429_rate, self.status_5xx_rate, self.timeout_rate, self.reset_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) > 1.0:
            raise ValueError("fault rates must be within 0..1 and add up to at most 1")
        if self.timeout_seconds < 0:
            raise ValueError("timeout_seconds must be >= 0")


def api_major(version: str) -> int:
    """Return the major number of a Graph version segment like ``v21.0``.

    Raises:
        GraphError: The segment is not ``v<major>.<minor>`` (code 100).
    """
    match = _VERSION.match(version)
    if match is None:
        raise GraphError(100, "unknown path components: the version must look like v21.0")
    return int(match.group(1))


class Sandbox:
    """One emulated WhatsApp Business number with its patients.

    Args:
        config: The configuration.

    Raises:
        TemplateFileError: The template file is unusable.
        OSError: The template file cannot be read.
    """

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.templates: TemplateRegistry = load_templates(config.templates_file)
        self.stats = Stats()
        self.webhooks = WebhookDispatcher(config, self.stats)
        self._rng = random.Random(config.seed)  # noqa: S311 - simulation, not security
        self._ids = itertools.count(1)
        self._undeliverable = frozenset(re.sub(r"\D", "", n) for n in config.undeliverable)
        self._init_state()

    def _init_state(self) -> None:
        cfg = self.config
        self.messages: deque[dict[str, Any]] = deque(maxlen=cfg.message_log_size)
        self._by_id: dict[str, dict[str, Any]] = {}
        self._last_inbound: dict[str, float] = {}
        self.scripts: list[PatientScript] = list(cfg.scripts)
        self.faults = Faults()
        self._fault_rng = random.Random(cfg.seed)  # noqa: S311 - simulation, not security
        self._throughput: dict[str, ThroughputLimiter] = {}
        self._pair = PairLimiter(cfg.pair_burst, cfg.pair_interval_seconds)
        self._conversations: dict[str, str] = {}
        self._inbound_prune_at = _MAX_TRACKED_PATIENTS

    async def start(self) -> None:
        """Start webhook delivery (idempotent; also called lazily by the first send)."""
        self.webhooks.start()

    async def aclose(self) -> None:
        """Stop webhook delivery."""
        await self.webhooks.aclose()

    def reset(self) -> None:
        """Forget messages, counters, scripts added at run time, faults and queued webhooks."""
        self.webhooks.clear()
        self.stats.clear()
        self._init_state()

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault injection settings.

        Args:
            faults: The new settings; their seed restarts the fault draws.
        """
        self.faults = faults
        seed = faults.seed if faults.seed is not None else self.config.seed
        self._fault_rng = random.Random(seed)  # noqa: S311 - simulation, not security

    def pick_fault(self) -> str | None:
        """Draw the fault for one send call.

        Returns:
            ``status_429``, ``status_5xx``, ``timeout``, ``reset`` or ``None``.
        """
        f = self.faults
        if not (f.status_429_rate or f.status_5xx_rate or f.timeout_rate or f.reset_rate):
            return None
        draw = self._fault_rng.random()
        for name, rate in (
            ("status_429", f.status_429_rate),
            ("status_5xx", f.status_5xx_rate),
            ("timeout", f.timeout_rate),
            ("reset", f.reset_rate),
        ):
            if draw < rate:
                self.stats.faults[name] += 1
                return name
            draw -= rate
        return None

    def pick_5xx(self) -> int:
        """Choose which 5xx answer a ``status_5xx`` fault gives (500, 502 or 503)."""
        return self._fault_rng.choice((500, 502, 503))

    def count_error(self, code: int) -> None:
        """Count one refusal by Graph error code."""
        self.stats.errors[str(code)] += 1

    # -- sending -------------------------------------------------------------------------------

    def handle_send(self, version: str, phone_number_id: str, body: Any) -> dict[str, Any]:
        """Validate and accept one call to the messages endpoint.

        Args:
            version: The path's version segment (``v21.0``).
            phone_number_id: The path's phone-number id.
            body: The decoded JSON body.

        Returns:
            The success body (send) or ``{"success": true}`` (mark as read).

        Raises:
            GraphError: Meta's refusal, with code and HTTP status.
        """
        major = api_major(version)
        if phone_number_id != self.config.phone_number_id:
            raise GraphError(
                100,
                f"Unsupported post request. Object with ID '{phone_number_id}' does not exist, "
                "cannot be loaded due to missing permissions, or does not support this operation",
            )
        request = validate_request(body, self.templates)
        if isinstance(request, ReadReceipt):
            self.stats.read_receipts += 1
            return {"success": True}
        limiter = self._throughput.get(phone_number_id)
        if limiter is None:
            limiter = self._throughput[phone_number_id] = ThroughputLimiter(
                self.config.rate_per_second
            )
        if not limiter.try_acquire():
            raise GraphError(
                130429,
                "Cloud API message throughput has been reached.",
                http_status=self.config.throughput_http_status,
            )
        self.stats.max_rate_per_second = max(self.stats.max_rate_per_second, limiter.max_in_window)
        if not self._pair.try_acquire(request.wa_id):
            raise GraphError(
                131056,
                "Message failed to send because there were too many messages sent from this "
                "phone number to the same phone number in a short period of time.",
            )
        return self._accept(request, major)

    def _wamid(self, wa_id: str) -> str:
        # Meta's wamids are base64 of a small binary record holding the number (reference §1.6).
        tail = f"{next(self._ids):06X}{self._rng.getrandbits(48):012X}".encode()
        digits = wa_id.encode()[:64]
        raw = b"\x1c\x18" + bytes([len(digits)]) + digits + b"\x15\x02\x00\x11\x18\x12" + tail
        return "wamid." + base64.b64encode(raw + b"\x00").decode()

    def _accept(self, send: ValidatedSend, major: int) -> dict[str, Any]:
        now = time.time()
        wamid = self._wamid(send.wa_id)
        record: dict[str, Any] = {
            "id": wamid,
            "to": send.to,
            "wa_id": send.wa_id,
            "type": send.type,
            "template": (
                {"name": send.template.name, "language": send.template.language}
                if send.template
                else None
            ),
            "interactive_type": send.interactive_type,
            "text": send.text,
            "buttons": send.buttons,
            "rows": send.rows,
            "biz_opaque_callback_data": send.callback_data,
            "context_id": send.context_id,
            "timestamp": now,
            "statuses": [],
            # Kept serialised: a parsed body costs several kB per message in a long run.
            "request": orjson.dumps(send.body),
        }
        if self.messages.maxlen is not None and len(self.messages) == self.messages.maxlen:
            self._by_id.pop(self.messages[0]["id"], None)
        self.messages.append(record)
        self._by_id[wamid] = record
        self.stats.accepted += 1
        delivered = self._plan_statuses(send, record, major, now)
        if delivered:
            self._run_scripts(record)
        response: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "contacts": [{"input": send.to, "wa_id": send.wa_id}],
            "messages": [{"id": wamid}],
        }
        if send.type == "template":
            response["messages"][0]["message_status"] = "accepted"
        return response

    def _status(
        self, record: dict[str, Any], status: str, at: float, extra: dict[str, Any]
    ) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": record["id"],
            "status": status,
            "timestamp": str(int(at)),
            "recipient_id": record["wa_id"],
        }
        if record["biz_opaque_callback_data"] is not None:
            item["biz_opaque_callback_data"] = record["biz_opaque_callback_data"]
        item.update(extra)
        return item

    def _plan_statuses(
        self, send: ValidatedSend, record: dict[str, Any], major: int, now: float
    ) -> bool:
        """Queue the message's status webhooks; return whether it reaches the patient."""
        cfg = self.config
        rng = self._rng
        failure: tuple[int, str] | None = None
        if send.wa_id in self._undeliverable:
            failure = (131026, "Message Undeliverable.")
        elif (
            cfg.enforce_service_window
            and send.type != "template"
            and now - self._last_inbound.get(send.wa_id, float("-inf")) > _SERVICE_WINDOW_S
        ):
            details = (
                "Message failed to send because more than 24 hours have passed since the "
                "customer last replied to this number."
            )
            failure = (131047, details)
        if failure is not None:
            item = self._status(
                record,
                "failed",
                now + cfg.sent_delay_ms / 1000,
                {"errors": [webhook_error(failure[0], failure[1])]},
            )
            self._queue_statuses(record, [(cfg.sent_delay_ms / 1000, item)], None)
            return False
        if send.template is not None:
            category = send.template.category.lower()
            pricing = {
                "billable": True,
                "pricing_model": "PMP",
                "type": "regular",
                "category": category,
            }
        else:
            category = "service"
            pricing = {
                "billable": False,
                "pricing_model": "PMP",
                "type": "free_customer_service",
                "category": "service",
            }
        conversation: dict[str, Any] | None = None
        if major < _CONVERSATION_UNTIL_MAJOR:
            if len(self._conversations) > _MAX_TRACKED_PATIENTS:
                self._conversations.clear()  # a new conversation id is harmless
            conv_id = self._conversations.setdefault(
                send.wa_id, f"{self._rng.getrandbits(128):032x}"
            )
            conversation = {"id": conv_id, "origin": {"type": category}}
        delays = [cfg.sent_delay_ms / 1000, cfg.delivered_delay_ms / 1000]
        names = ["sent", "delivered"]
        if rng.random() < cfg.read_probability:
            delays.append(cfg.read_delay_ms / 1000)
            names.append("read")
        planned: list[tuple[float, dict[str, Any]]] = []
        for name, delay in zip(names, delays, strict=True):
            extra: dict[str, Any] = {}
            if conversation is not None:
                conv = dict(conversation)
                if name == "sent":
                    conv = {
                        "id": conversation["id"],
                        "expiration_timestamp": str(int(now) + _SERVICE_WINDOW_S),
                        "origin": conversation["origin"],
                    }
                extra["conversation"] = conv
            if name in ("sent", "delivered"):
                extra["pricing"] = dict(pricing)
            planned.append((delay, self._status(record, name, now + delay, extra)))
        if rng.random() < cfg.reorder_probability:
            # Timestamps keep the true order; only the delivery order changes (reference §7).
            shuffled = [d for d, _ in planned]
            while len(shuffled) > 1 and shuffled == sorted(shuffled):
                rng.shuffle(shuffled)
            planned = [(d, item) for d, (_, item) in zip(shuffled, planned, strict=True)]
        self._queue_statuses(record, planned, contact_for(send.wa_id, cfg.patient_name))
        return True

    def _queue_statuses(
        self,
        record: dict[str, Any],
        planned: list[tuple[float, dict[str, Any]]],
        contact: dict[str, Any] | None,
    ) -> None:
        for delay, item in planned:
            record["statuses"].append(item["status"])
            self._schedule(delay, Update("statuses", item, contact))
            self.stats.statuses_scheduled += 1
            if self._rng.random() < self.config.duplicate_probability:
                self._schedule(
                    delay + self._rng.uniform(0.0, 0.2), Update("statuses", item, contact)
                )
                self.stats.statuses_scheduled += 1

    def _schedule(self, delay: float, update: Update) -> None:
        if self.webhooks.enabled:
            # Lazy start lets create_app work under httpx.ASGITransport, which runs no lifespan.
            self.webhooks.start()
            self.webhooks.schedule(delay, update)

    # -- patients ------------------------------------------------------------------------------

    def _run_scripts(self, record: dict[str, Any]) -> None:
        for script in list(self.scripts):
            if not script_matches(script, record):
                continue
            if script.once:
                self.scripts.remove(script)
            try:
                self.reply(
                    record["wa_id"],
                    button=script.button,
                    text=script.text,
                    list_row=script.list_row,
                    context_id=record["id"],
                    delay=script.delay_ms / 1000,
                )
            except ReplyError as exc:
                logger.warning("sandbox script could not answer: %s", exc)
            return

    def _target(self, wa_id: str, context_id: str | None, want: str) -> dict[str, Any]:
        if context_id is not None:
            record = self._by_id.get(context_id)
            if record is None or record["wa_id"] != wa_id:
                raise ReplyError("context_id is not a message the bridge sent to this number")
            return record
        candidate: dict[str, Any]
        for candidate in reversed(self.messages):
            if candidate["wa_id"] != wa_id:
                continue
            if want == "button" and (
                any(b.get("sub_type") == "quick_reply" for b in candidate["buttons"])
                or candidate["interactive_type"] == "button"
            ):
                return candidate
            if want == "list_row" and candidate["interactive_type"] == "list":
                return candidate
        raise ReplyError(f"the bridge sent no message with a {want.replace('_', ' ')} here")

    def reply(
        self,
        to: str,
        *,
        button: str | None = None,
        text: str | None = None,
        list_row: str | None = None,
        context_id: str | None = None,
        delay: float = 0.0,
    ) -> dict[str, Any]:
        """Make a patient answer; the bridge gets a signed ``messages`` webhook.

        Args:
            to: The patient's number (E.164 or digits).
            button: Tap a button: intent word (``confirm``), label, payload/id or index.
            text: Type a text.
            list_row: Pick a list row: id, title or index.
            context_id: The bridge's message being answered; default: the last fitting one.
            delay: Seconds before the webhook goes out.

        Returns:
            The inbound ``messages[]`` object as the bridge will receive it.

        Raises:
            ReplyError: Not exactly one of button/text/list_row, or nothing to answer.
        """
        wa_id = re.sub(r"\D", "", to)
        if not wa_id:
            raise ReplyError("to must be a phone number")
        if sum(x is not None for x in (button, text, list_row)) != 1:
            raise ReplyError("give exactly one of button, text, list_row")
        at = time.time() + delay
        message: dict[str, Any] = {}
        if button is not None:
            record = self._target(wa_id, context_id, "button")
            choice = choose_button(record, button, self.templates)
            message["context"] = {"from": self.config.display_phone_number, "id": record["id"]}
            body: dict[str, Any]
            if record["type"] == "template":
                body = {"type": "button", "button": choice}
            else:
                body = {
                    "type": "interactive",
                    "interactive": {"type": "button_reply", "button_reply": choice},
                }
        elif list_row is not None:
            record = self._target(wa_id, context_id, "list_row")
            message["context"] = {"from": self.config.display_phone_number, "id": record["id"]}
            body = {
                "type": "interactive",
                "interactive": {"type": "list_reply", "list_reply": choose_row(record, list_row)},
            }
        else:
            if context_id is not None:
                self._target(wa_id, context_id, "text")
                message["context"] = {"from": self.config.display_phone_number, "id": context_id}
            body = {"type": "text", "text": {"body": text}}
        message.update({"from": wa_id, "id": self._wamid(wa_id), "timestamp": str(int(at)), **body})
        # Every patient message opens or renews the 24-hour window (reference §4.3).
        if len(self._last_inbound) > self._inbound_prune_at:
            cutoff = time.time() - _SERVICE_WINDOW_S
            self._last_inbound = {k: t for k, t in self._last_inbound.items() if t > cutoff}
            # Doubling keeps pruning amortised O(1) when every window is still open.
            self._inbound_prune_at = max(_MAX_TRACKED_PATIENTS, 2 * len(self._last_inbound))
        self._last_inbound[wa_id] = at
        self._schedule(
            delay, Update("messages", message, contact_for(wa_id, self.config.patient_name))
        )
        self.stats.inbound_scheduled += 1
        return message

    # -- views for the control API ---------------------------------------------------------------

    def list_messages(self, to: str | None = None) -> list[dict[str, Any]]:
        """Return what the bridge sent, oldest first.

        Args:
            to: Only messages to this number (E.164 or digits).
        """
        wa_id = re.sub(r"\D", "", to) if to is not None else None
        return [
            {**m, "request": orjson.loads(m["request"])}
            for m in self.messages
            if wa_id is None or m["wa_id"] == wa_id
        ]

    def scripts_json(self) -> list[dict[str, Any]]:
        """Return the standing scripts as JSON objects."""
        return [asdict(s) for s in self.scripts]
