"""Benchmarks: `python -m bench [scenario] [--quick]`; each prints one JSON line of figures."""

from __future__ import annotations
