"""Shared test configuration.

Layers (see README): unit tests need nothing; ``orthanc`` tests run Debian's
Orthanc on loopback; ``lab`` tests need root and the region lab.
"""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "inventory" / "example" / "region.yaml"


@pytest.fixture
def example_text() -> str:
    # the classifier file is named relative to the example; the tests' copies live elsewhere
    return EXAMPLE.read_text(encoding="utf-8").replace(
        "file: classifier/procedures.csv", f"file: {EXAMPLE.parent / 'classifier' / 'procedures.csv'}")


@pytest.fixture
def secrets_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "secrets"
    monkeypatch.setenv("KONTUR_SECRETS", str(d))
    return d
