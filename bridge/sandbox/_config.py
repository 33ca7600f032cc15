"""Configuration of the WhatsApp sandbox: one frozen dataclass, with defaults that run offline.

The ids and the display number are fictional. The secrets default to documented sandbox values
(``SANDBOX_TOKEN``, ``SANDBOX_APP_SECRET``) so hospital IT can start the bridge with no Meta
account; the CLI overrides them from ``BRIDGE_WHATSAPP_TOKEN`` / ``BRIDGE_WHATSAPP_APP_SECRET``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_PHONE_NUMBER_ID",
    "DEFAULT_TEMPLATES_PATH",
    "DEFAULT_WABA_ID",
    "SANDBOX_APP_SECRET",
    "SANDBOX_TOKEN",
    "PatientScript",
    "SandboxConfig",
]

#: Bearer token the sandbox accepts when none is configured. Not a secret: it only opens the sandbox.
SANDBOX_TOKEN = "sandbox-token"  # noqa: S105
#: App secret the sandbox signs webhooks with when none is configured.
SANDBOX_APP_SECRET = "sandbox-app-secret"  # noqa: S105
#: Fictional ids the sandbox uses when none are configured.
DEFAULT_PHONE_NUMBER_ID = "109876543210987"
DEFAULT_WABA_ID = "102345678901234"
#: The template file shipped with the package (Graph template objects).
DEFAULT_TEMPLATES_PATH = Path(__file__).with_name("templates.json")

_REPLY_KINDS = ("button", "text", "list_row")


@dataclass(frozen=True, kw_only=True, slots=True)
class PatientScript:
    """How a simulated patient answers a message, without anyone driving it.

    Exactly one of ``button``, ``text`` or ``list_row`` is set.

    Args:
        to: The patient's number (E.164 or digits), or ``"*"`` for every number.
        on: What triggers it: a template name, ``"text"``, ``"interactive"``, or ``"*"`` (anything).
        button: Intent word or label of the button to tap (``"confirm"``), or its index (``"0"``).
        text: Free text to send back.
        list_row: Row id, title or index to pick in an interactive list.
        delay_ms: How long after the message arrives the patient answers.
        once: Forget the script after it fired once.
    """

    to: str = "*"
    on: str = "*"
    button: str | None = None
    text: str | None = None
    list_row: str | None = None
    delay_ms: int = 500
    once: bool = False

    def __post_init__(self) -> None:
        chosen = [k for k in _REPLY_KINDS if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("a patient script needs exactly one of button, text, list_row")
        if self.delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")


@dataclass(frozen=True, kw_only=True, slots=True)
class SandboxConfig:
    """Everything the sandbox needs; every field has an offline default.

    Args:
        host: Interface to listen on. Keep the loopback default: the control API has no auth.
        port: TCP port (0 picks a free one).
        phone_number_id: The Graph phone-number id the bridge sends from.
        waba_id: WhatsApp Business Account id (template list; ``entry[].id`` of webhooks).
        display_phone_number: Our business number as webhooks show it (digits).
        token: Bearer token the send and template endpoints require.
        app_secret: Key of the ``X-Hub-Signature-256`` HMAC on every webhook.
        webhook_url: Where status and reply webhooks go (the bridge's ``/webhooks/whatsapp``);
            ``None`` keeps them in memory only.
        templates_path: JSON file of Graph template objects; ``None`` uses the shipped file.
        rate_per_second: Messages per second per phone number before 130429 (Meta: 80).
        throughput_http_status: HTTP status of a 130429 answer (Meta's table: 400; some see 429).
        pair_burst: Messages one patient can get in a burst before 131056 (Meta allows 45).
        pair_interval_seconds: Steady pair rate: one message per this many seconds (Meta: 6).
        sent_delay_ms: Delay before the ``sent`` status.
        delivered_delay_ms: Delay before ``delivered``.
        read_delay_ms: Delay before ``read``.
        read_probability: Chance a patient has read receipts on (``read`` is sent).
        duplicate_probability: Chance each status webhook is delivered twice.
        reorder_probability: Chance a message's statuses arrive shuffled (e.g. read first).
        batch_max: Most updates per webhook POST (Meta batches up to 1000).
        batch_window_ms: How long a worker waits to fill a batch.
        undeliverable: Numbers (digits or E.164) whose messages are accepted, then fail (131026).
        enforce_service_window: Fail free-form messages (131047) to a patient who has not
            written in the last 24 hours, as Meta does.
        webhook_max_attempts: Attempts per webhook POST before giving up.
        webhook_retry_base_ms: First retry delay; it doubles each time (first retry is immediate).
        webhook_timeout_seconds: Time limit of one webhook POST.
        webhook_concurrency: Concurrent webhook POSTs.
        max_pending_webhooks: Bound of the webhook queue; beyond it updates are dropped and counted.
        message_log_size: How many sent messages ``GET /_sandbox/messages`` keeps (about
            6 kB each, so the embedded default stays near 120 MB at worst).
        patient_name: ``contacts[].profile.name`` of simulated patients (synthetic).
        scripts: Standing patient scripts.
        seed: Seed of the random choices (duplicates, reordering, faults, ids).
    """

    host: str = "127.0.0.1"
    port: int = 8081
    phone_number_id: str = DEFAULT_PHONE_NUMBER_ID
    waba_id: str = DEFAULT_WABA_ID
    display_phone_number: str = "15550100001"
    token: str = SANDBOX_TOKEN
    app_secret: str = SANDBOX_APP_SECRET
    webhook_url: str | None = None
    templates_path: Path | None = None
    rate_per_second: float = 80.0
    throughput_http_status: int = 400
    pair_burst: int = 45
    pair_interval_seconds: float = 6.0
    sent_delay_ms: int = 50
    delivered_delay_ms: int = 150
    read_delay_ms: int = 400
    read_probability: float = 1.0
    duplicate_probability: float = 0.0
    reorder_probability: float = 0.0
    batch_max: int = 1
    batch_window_ms: int = 0
    undeliverable: frozenset[str] = field(default_factory=frozenset)
    enforce_service_window: bool = True
    webhook_max_attempts: int = 6
    webhook_retry_base_ms: int = 100
    webhook_timeout_seconds: float = 5.0
    webhook_concurrency: int = 8
    max_pending_webhooks: int = 100_000
    message_log_size: int = 20_000
    patient_name: str = "Sandbox Patient"
    scripts: tuple[PatientScript, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.rate_per_second <= 0:
            problems.append("rate_per_second must be > 0")
        if self.pair_burst < 1:
            problems.append("pair_burst must be >= 1")
        if self.pair_interval_seconds <= 0:
            problems.append("pair_interval_seconds must be > 0")
        problems.extend(
            f"{name} must be within 0..1"
            for name in ("read_probability", "duplicate_probability", "reorder_probability")
            if not 0.0 <= getattr(self, name) <= 1.0
        )
        if self.batch_max < 1 or self.batch_max > 1000:
            problems.append("batch_max must be within 1..1000")
        if self.webhook_max_attempts < 1:
            problems.append("webhook_max_attempts must be >= 1")
        if self.message_log_size < 1:
            problems.append("message_log_size must be >= 1")
        if self.webhook_concurrency < 1:
            problems.append("webhook_concurrency must be >= 1")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def templates_file(self) -> Path:
        """The template file in use (the configured one, or the shipped default)."""
        return self.templates_path if self.templates_path is not None else DEFAULT_TEMPLATES_PATH
