"""EHR connectors, each a plugin registered under the `bridge.connectors` entry point."""

from __future__ import annotations
