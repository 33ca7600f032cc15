"""Fixtures for the mapping tests: the shipped mappings and a writable copy of them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bridge.engine.mappings import MappingSet
from tests.engine_mappings.support import SHIPPED


@pytest.fixture(name="mappings", scope="session")
def _mappings() -> MappingSet:
    return MappingSet.default()


@pytest.fixture(name="site")
def _site(tmp_path: Path) -> Path:
    """A writable copy of the shipped mappings folder."""
    target = tmp_path / "mappings"
    shutil.copytree(SHIPPED, target)
    return target
