"""Fixtures shared by the unit tests."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "inventory" / "example" / "region.yaml"


@pytest.fixture
def region_file(tmp_path) -> Path:
    """A copy of the example inventory (with its classifier) that a test may edit."""
    p = tmp_path / "region.yaml"
    shutil.copy(EXAMPLE, p)
    shutil.copytree(EXAMPLE.parent / "classifier", tmp_path / "classifier")
    return p
