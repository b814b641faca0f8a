# SPDX-License-Identifier: AGPL-3.0-or-later
"""Replication end to end in the region lab (issue 5): the replication test
region (tests/data/replication-region.yaml) brought up once for the module
by the lab fixtures of :mod:`kontur.lab.pytest_fixtures` and deployed once
with the real ``kontur deploy --lab`` (the deploy tests' helpers, imported
from tests/deploy/deploy_helpers.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, REPO / "tests" / "deploy"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from kontur.inventory import load  # noqa: E402
from kontur.lab.pytest_fixtures import lab_manager  # noqa: E402,F401
from kontur.lab.state import LabState  # noqa: E402

from deploy_helpers import deploy  # noqa: E402

REPLICATION_REGION = REPO / "tests" / "data" / "replication-region.yaml"
FIGURES = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def figures(request) -> list[str]:
    """Measured figures; printed in the terminal summary (also under capture)."""
    return request.config.stash.setdefault(FIGURES, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("replication in the lab: measured")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def repl_lab(lab_manager) -> LabState:  # noqa: F811
    """The replication region's lab (brings down whatever lab the session had up)."""
    return lab_manager.ensure(REPLICATION_REGION)


@pytest.fixture(scope="module")
def deployed(repl_lab, figures) -> LabState:
    """The region deployed onto the lab's clean hosts, once for the module."""
    r = deploy(REPLICATION_REGION)
    if r.rc != 0 or r.failed != 0:
        pytest.fail(f"kontur deploy --lab -i {REPLICATION_REGION} failed (exit {r.rc}):\n{r.out[-4000:]}",
                    pytrace=False)
    figures.append(f"deploy: {r.out.strip().splitlines()[-1]}")
    return repl_lab


@pytest.fixture(scope="module")
def region():
    """The inventory as written (client_for(..., lab=True) moves it to lab addresses)."""
    return load(REPLICATION_REGION)
