"""Local WhatsApp Cloud API emulator: Graph endpoints, signed webhooks, simulated patients.

The sandbox is the bridge's embedded default (no Meta account needed), the demo's phone and
the peer of every WhatsApp test. It behaves like the Graph API endpoints the bridge uses
(reference whatsapp.md): send messages, list templates, mark as read; it validates like Meta,
answers with Meta's shapes and error codes, enforces throughput (130429) and pair rate (131056),
and sends signed status and reply webhooks to the bridge.

Use::

    from bridge.sandbox import SandboxConfig, SandboxServer

    hook = "http://127.0.0.1:8080/webhooks/whatsapp"
    async with SandboxServer(SandboxConfig(port=0, webhook_url=hook)) as server:
        ...  # point the bridge's Graph base URL at server.url; drive patients via
        ...  # server.sandbox.reply(...) or POST {server.url}/_sandbox/reply
"""

from __future__ import annotations

from bridge.sandbox._app import create_app
from bridge.sandbox._config import (
    DEFAULT_TEMPLATES_PATH,
    SANDBOX_APP_SECRET,
    SANDBOX_TOKEN,
    PatientScript,
    SandboxConfig,
)
from bridge.sandbox._errors import GraphError
from bridge.sandbox._patients import ReplyError
from bridge.sandbox._sandbox import Faults, Sandbox
from bridge.sandbox._server import SandboxServer
from bridge.sandbox._templates import TemplateFileError
from bridge.sandbox._webhooks import sign

__all__ = [
    "DEFAULT_TEMPLATES_PATH",
    "SANDBOX_APP_SECRET",
    "SANDBOX_TOKEN",
    "Faults",
    "GraphError",
    "PatientScript",
    "ReplyError",
    "Sandbox",
    "SandboxConfig",
    "SandboxServer",
    "TemplateFileError",
    "create_app",
    "sign",
]
