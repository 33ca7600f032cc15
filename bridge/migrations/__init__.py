"""Alembic migrations for the bridge's schema (run with ``bridge db upgrade``).

They live inside the package, not in a top-level ``migrations/`` folder as DESIGN.md §2 first
drew it, so that a wheel installed on a hospital server can migrate its own database.
"""

from __future__ import annotations
