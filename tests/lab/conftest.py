# SPDX-License-Identifier: AGPL-3.0-or-later
"""Lab end-to-end tests: root, systemd-nspawn, network namespaces.

The fixtures live in :mod:`kontur.lab.pytest_fixtures` so other test folders
can import them too; see its docstring.
"""
from __future__ import annotations

from kontur.lab.pytest_fixtures import (  # noqa: F401
    example_lab,
    lab,
    lab_manager,
    no_lab,
    order_example_last,
)


def pytest_collection_modifyitems(session, config, items):
    order_example_last(items)
