"""Shared test configuration.

Layers (see README): unit tests need nothing; ``orthanc`` tests run Debian's
Orthanc on loopback; ``lab`` tests need root and the region lab.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from kontur.testing.postgres import PostgresProcess

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


# --- the HL7 service's state where a node keeps it: SQLite (a gateway) and
# PostgreSQL (a LAMI; a throw-away server of Debian's PostgreSQL 15, started
# for the session on first use); the tests that take ``backend`` run on both

@pytest.fixture(scope="session")
def postgres():
    # not under pytest's temporary directory: PostgreSQL runs as its own user,
    # which cannot enter root's 0700 directories
    where = Path(tempfile.mkdtemp(prefix="kontur-hl7-pg-"))
    os.chmod(where, 0o711)
    pg = PostgresProcess(where / "pg")
    try:
        yield pg.start()
    finally:
        pg.remove()
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request):
    """Keyword arguments for :class:`kontur.testing.hl7.Hl7Service`."""
    return {"postgres": request.getfixturevalue("postgres")} if request.param == "postgresql" else {}
