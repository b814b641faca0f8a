# SPDX-License-Identifier: AGPL-3.0-or-later
"""Inventories for the unit tests: an edited copy of a region's YAML and the
problems validation finds in it."""
from __future__ import annotations

import pytest

from ..inventory import InventoryError, dump_rt, load_text, parse_yaml


def edited(text: str, edit) -> str:
    """``text`` after ``edit(doc)`` on its round-trip document."""
    doc = parse_yaml(text, "t")
    edit(doc)
    return dump_rt(doc)


def problems_of(text: str) -> list[str]:
    """Validation's problems with ``text`` (it must have some)."""
    with pytest.raises(InventoryError) as info:
        load_text(text, "region.yaml")
    return [str(p) for p in info.value.problems]


def one_problem(text: str, path: str, fragment: str) -> None:
    """Among the problems, one names ``path`` and says ``fragment``."""
    found = problems_of(text)
    assert any(path in p and fragment in p for p in found), found
