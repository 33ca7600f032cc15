"""The benchmark scenarios; each ``run(options)`` returns one dict of figures (one JSON line)."""

from __future__ import annotations
