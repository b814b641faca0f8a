"""The durable outbox on a real sqlite file."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from kontur_plugins.replication.outbox import Outbox

PLUGINS = __import__("pathlib").Path(__file__).resolve().parents[3] / "plugins"


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "state" / "replication.sqlite3")


def test_state_survives_reopening(db):
    ob = Outbox(db)
    ob.ensure("s1", 10, "1.2.3", "P1")
    assert ob.enqueue("s1", 11, "stable") == "pending"
    ob.set_meta("changes_seq", 42)
    ob.set_flag("1.2.4", True, 12, "rest")
    ob.close()
    again = Outbox(db)
    row = again.get("s1")
    assert row["state"] == "pending" and row["queued_at"] == 11 and row["study_uid"] == "1.2.3"
    assert again.get_meta("changes_seq") == "42"
    assert again.is_flagged("1.2.4") and not again.is_flagged("9.9")


def test_committed_state_survives_kill9_of_the_writer(db):
    """A process commits, then dies by SIGKILL mid-way through the next write."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(PLUGINS)!r})
        from kontur_plugins.replication.outbox import Outbox
        ob = Outbox({db!r})
        for i in range(20):
            ob.enqueue(f"s{{i}}", 100 + i, "stable")
        with ob.transaction():
            ob.enqueue("uncommitted", 200, "stable")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert res.returncode == -9
    ob = Outbox(db)
    assert len(ob.rows("pending")) == 20
    assert ob.get("uncommitted") is None
    assert ob.next_due(1000, True)["study_id"] == "s0"


def test_queue_order_urgent_first_then_oldest(db):
    ob = Outbox(db)
    ob.enqueue("old", 1, "stable")
    ob.enqueue("new", 2, "stable")
    assert ob.next_due(10, True)["study_id"] == "old"
    ob.enqueue("hot", 3, "operator", urgent=True)
    assert ob.next_due(10, True)["study_id"] == "hot"
    # window closed: only urgent
    assert ob.next_due(10, False)["study_id"] == "hot"
    ob.delivered("hot", 11, 3, "20250101T000000", None)
    assert ob.next_due(12, False) is None
    assert ob.next_due(12, True)["study_id"] == "old"


def test_failure_backoff_and_visibility(db):
    ob = Outbox(db)
    ob.enqueue("s", 100, "stable")
    ob.failed("s", 101, "cannot reach tsami", 131)
    assert ob.next_due(120, True) is None
    assert ob.next_due(131, True)["study_id"] == "s"
    s = ob.summary(200, 24 * 3600)
    assert s["queue_depth"] == 1 and s["failing"] == 1 and s["oldest_pending_queued_at"] == 100
    assert ob.counters()["failures_total"] == 1
    assert "cannot reach" in ob.get_meta("last_error")
    # re-queueing a pending study keeps its age (the oldest pending age stays honest)
    ob.enqueue("s", 150, "stable")
    assert ob.get("s")["queued_at"] == 100


def test_parked_study_stays_parked_until_an_operator_pushes(db):
    ob = Outbox(db)
    ob.enqueue("s", 1, "stable")
    ob.park("s", 2, "tsami refused instance x: HTTP 400")
    assert ob.enqueue("s", 3, "new instances") == "parked"
    assert ob.get("s")["state"] == "parked"
    assert [p["study_id"] for p in ob.parked()] == ["s"]
    assert ob.enqueue("s", 4, "operator push", unpark=True) == "pending"
    assert ob.parked() == []


def test_touch_quiet_and_stable(db):
    ob = Outbox(db)
    ob.touch("s", 100)
    assert ob.quiet(102, 5) == []
    assert [r["study_id"] for r in ob.quiet(106, 5)] == ["s"]
    ob.mark_stable("s", 107)
    assert ob.quiet(200, 5) == []
    assert ob.summary(200, 1)["awaiting_stable"] == 0


def test_deadline_and_gateway_deletions(db):
    ob = Outbox(db)
    ob.enqueue("late", 0, "stable")
    ob.enqueue("fresh", 90_000, "stable")
    assert ob.summary(90_001, 24 * 3600)["overdue"] == 1
    ob.delivered("fresh", 90_002, 5, "x", delete_after=90_002)
    assert [r["study_id"] for r in ob.deletions_due(90_003)] == ["fresh"]
    ob.mark_deleted("fresh", 90_004, 5)
    assert ob.deletions_due(90_005) == []
    assert ob.counters()["deleted_instances_total"] == 5


def test_nested_transactions_commit_once_and_roll_back_together(db):
    ob = Outbox(db)
    with pytest.raises(RuntimeError):
        with ob.transaction():
            ob.enqueue("a", 1, "x")
            ob.enqueue("b", 1, "x")
            raise RuntimeError("boom")
    assert ob.get("a") is None and ob.get("b") is None
    with ob.transaction():
        ob.enqueue("a", 1, "x")
    assert ob.get("a")["state"] == "pending"


def test_dequeue_withdraws_only_undelivered(db):
    ob = Outbox(db)
    ob.enqueue("p", 1, "flag")
    ob.enqueue("d", 1, "flag")
    ob.delivered("d", 2, 1, None, None)
    assert ob.dequeue("p", 3, "flag withdrawn")
    assert not ob.dequeue("d", 3, "flag withdrawn")
    assert ob.get("p")["state"] == "idle" and ob.get("d")["state"] == "delivered"
