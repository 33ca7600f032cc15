"""The fault suite's collection rule: ``slow`` soak tests run only when asked for.

``pytest tests/faults`` runs the CI versions (a few minutes on two cores); ``pytest tests/faults
-m slow`` runs the long soaks (10 kills, 10,000 fuzz frames and bodies). The soaks are
deselected rather than skipped, so a default run lists no skipped tests for them.
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``slow`` items unless the ``-m`` expression names them."""
    if "slow" in (config.option.markexpr or ""):
        return
    keep = [item for item in items if item.get_closest_marker("slow") is None]
    dropped = [item for item in items if item.get_closest_marker("slow") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
