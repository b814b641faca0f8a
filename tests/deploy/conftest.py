# SPDX-License-Identifier: AGPL-3.0-or-later
"""Deploy tests: ``deploys/`` is importable from the repository root; the lab
fixtures come from :mod:`kontur.lab.pytest_fixtures` (one lab per session);
helpers are in ``deploy_helpers.py``."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kontur.lab.pytest_fixtures import example_lab, lab, lab_manager, order_example_last  # noqa: E402,F401

from deploy_helpers import write_dicom  # noqa: E402


def pytest_collection_modifyitems(session, config, items):
    # the small lab first, the example region's lab last: one lab swap
    order_example_last(items)


@pytest.fixture(scope="session")
def dicom_file(tmp_path_factory) -> Path:
    return write_dicom(tmp_path_factory.mktemp("dicom") / "ct.dcm")
