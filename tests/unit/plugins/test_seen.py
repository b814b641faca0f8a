# SPDX-License-Identifier: AGPL-3.0-or-later
"""The last study per device: recorded, never moved back in time, odd AE titles ignored."""
from kontur_plugins.seen import answer, record


def test_a_newer_study_replaces_an_older_one_and_never_the_other_way():
    d = record({}, "CT1", "s1", 100.0)
    d = record(d, "CT1", "s2", 200.0)
    assert d == {"CT1": {"at": 200.0, "study": "s2"}}
    assert record(d, "CT1", "s0", 50.0) is d           # a late worker does not move it back
    d = record(d, "MR1", "s3", 150.0)
    assert set(d) == {"CT1", "MR1"}


def test_an_empty_or_too_long_ae_title_is_not_recorded():
    assert record({}, "", "s", 1.0) == {}
    assert record({}, "  ", "s", 1.0) == {}
    assert record({}, "X" * 17, "s", 1.0) == {}


def test_the_answer_names_since_when_the_node_records():
    assert answer(None, 12.0) == {"since": 12.0, "devices": {}}
