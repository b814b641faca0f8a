# SPDX-License-Identifier: AGPL-3.0-or-later
"""The durable outbox: sqlite3 (WAL, synchronous=FULL) in the state directory.

One row per study this node has seen change or was asked to send.  A study's
``state``:

``idle``       seen, not selected by the policy (yet)
``pending``    queued; the sender takes it when due (urgent first, oldest first)
``delivered``  the upstream held every instance this node held when verified
``parked``     the upstream refused it; kept with the reason until an operator
               pushes it again (never retried by itself, never dropped)
``held``       a gate stage holds it back (transfer-package checks, later issues)
``gone``       deleted here before it could be sent (logged; nothing to send)

"In flight" is not a stored state: a study being sent stays ``pending`` in the
database, so a crash (kill -9, power cut) leaves it queued and the next attempt
sends only what the upstream still lacks.  Writes are transactions; each
thread has its own connection.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from typing import Any, Iterator

STATES = ("idle", "pending", "delivered", "parked", "held", "gone")

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_id TEXT PRIMARY KEY,
    study_uid TEXT,
    patient_id TEXT,
    selected INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'idle',
    urgent INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    queued_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_error TEXT,
    touched_at REAL,
    awaiting_stable INTEGER NOT NULL DEFAULT 0,
    delivered_at REAL,
    delivered_count INTEGER,
    delivered_last_update TEXT,
    delete_after REAL,
    deleted_at REAL,
    updated_at REAL
);
CREATE INDEX IF NOT EXISTS studies_queue ON studies(state, urgent, queued_at);
CREATE INDEX IF NOT EXISTS studies_awaiting ON studies(awaiting_stable, touched_at);
CREATE INDEX IF NOT EXISTS studies_uid ON studies(study_uid);
CREATE INDEX IF NOT EXISTS studies_delete ON studies(delete_after);
CREATE TABLE IF NOT EXISTS flags (
    study_uid TEXT PRIMARY KEY,
    pathology INTEGER NOT NULL,
    flagged_at REAL NOT NULL,
    source TEXT
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class Outbox:
    def __init__(self, path: str):
        self.path = path
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        with self._write_lock:
            self._conn().executescript(SCHEMA)

    # --- connections and transactions ------------------------------------

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            c.row_factory = sqlite3.Row
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA busy_timeout=30000")
            self._local.conn = c
            self._local.depth = 0
        return c

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested calls on one thread join the outer one."""
        c = self._conn()
        if self._local.depth:
            self._local.depth += 1
            try:
                yield c
            finally:
                self._local.depth -= 1
            return
        with self._write_lock:
            c.execute("BEGIN IMMEDIATE")
            self._local.depth = 1
            try:
                yield c
            except BaseException:
                self._local.depth = 0
                c.execute("ROLLBACK")
                raise
            self._local.depth = 0
            c.execute("COMMIT")

    def transaction(self):
        return self._tx()

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    # --- meta and counters ------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO meta(key, value) VALUES(?, ?) "
                      "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, None if value is None else str(value)))

    def incr(self, name: str, by: int = 1) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO counters(name, value) VALUES(?, ?) "
                      "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value", (name, by))

    def counters(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._conn().execute("SELECT name, value FROM counters")}

    # --- studies ----------------------------------------------------------

    def get(self, study_id: str) -> dict | None:
        row = self._conn().execute("SELECT * FROM studies WHERE study_id=?", (study_id,)).fetchone()
        return dict(row) if row else None

    def by_uid(self, study_uid: str) -> list[dict]:
        return [dict(r) for r in self._conn().execute(
            "SELECT * FROM studies WHERE study_uid=? ORDER BY study_id", (study_uid,))]

    def ensure(self, study_id: str, now: float, study_uid: str | None = None,
               patient_id: str | None = None) -> dict:
        with self._tx() as c:
            c.execute("INSERT INTO studies(study_id, study_uid, patient_id, updated_at) VALUES(?,?,?,?) "
                      "ON CONFLICT(study_id) DO UPDATE SET "
                      "study_uid=COALESCE(studies.study_uid, excluded.study_uid), "
                      "patient_id=COALESCE(studies.patient_id, excluded.patient_id)",
                      (study_id, study_uid, patient_id, now))
            return dict(c.execute("SELECT * FROM studies WHERE study_id=?", (study_id,)).fetchone())

    def touch(self, study_id: str, now: float) -> None:
        """New instances arrived: the study waits for stability (again)."""
        with self._tx() as c:
            c.execute("INSERT INTO studies(study_id, touched_at, awaiting_stable, updated_at) VALUES(?,?,1,?) "
                      "ON CONFLICT(study_id) DO UPDATE SET touched_at=excluded.touched_at, "
                      "awaiting_stable=1, updated_at=excluded.updated_at", (study_id, now, now))

    def mark_stable(self, study_id: str, now: float) -> dict:
        with self._tx() as c:
            c.execute("INSERT INTO studies(study_id, updated_at) VALUES(?,?) ON CONFLICT(study_id) DO "
                      "UPDATE SET awaiting_stable=0, updated_at=excluded.updated_at", (study_id, now))
            return dict(c.execute("SELECT * FROM studies WHERE study_id=?", (study_id,)).fetchone())

    def quiet(self, now: float, quiet_seconds: float, limit: int = 1000) -> list[dict]:
        """Studies touched by new instances that have been quiet long enough but
        never saw a stable event (a restart forgets Orthanc's pending ones)."""
        return [dict(r) for r in self._conn().execute(
            "SELECT * FROM studies WHERE awaiting_stable=1 AND touched_at<=? ORDER BY touched_at LIMIT ?",
            (now - quiet_seconds, limit))]

    def enqueue(self, study_id: str, now: float, reason: str, *, urgent: bool = False,
                unpark: bool = False) -> str:
        """Select and queue a study; returns its state afterwards.  A parked study
        stays parked unless ``unpark`` (an operator's explicit push)."""
        with self._tx() as c:
            row = c.execute("SELECT state, urgent FROM studies WHERE study_id=?", (study_id,)).fetchone()
            if row is None:
                c.execute("INSERT INTO studies(study_id, updated_at) VALUES(?,?)", (study_id, now))
                state = "idle"
            else:
                state = row["state"]
            if state == "parked" and not unpark:
                c.execute("UPDATE studies SET selected=1, updated_at=? WHERE study_id=?", (now, study_id))
                return "parked"
            if state == "pending":
                c.execute("UPDATE studies SET selected=1, urgent=MAX(urgent, ?), "
                          "next_attempt_at=CASE WHEN ? THEN ? ELSE next_attempt_at END, "
                          "updated_at=? WHERE study_id=?",
                          (int(urgent), int(urgent or unpark), now, now, study_id))
                return "pending"
            c.execute("UPDATE studies SET selected=1, state='pending', urgent=?, reason=?, queued_at=?, "
                      "attempts=0, next_attempt_at=?, last_error=NULL, updated_at=? WHERE study_id=?",
                      (int(urgent), reason, now, now, now, study_id))
            return "pending"

    def hold(self, study_id: str, now: float, reason: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET selected=1, state='held', reason=?, "
                      "queued_at=COALESCE(queued_at, ?), updated_at=? WHERE study_id=?",
                      (reason, now, now, study_id))

    def dequeue(self, study_id: str, now: float, reason: str) -> bool:
        """Take a not-yet-delivered study out of the queue (a flag withdrawn)."""
        with self._tx() as c:
            cur = c.execute("UPDATE studies SET selected=0, state='idle', urgent=0, reason=?, queued_at=NULL, "
                            "updated_at=? WHERE study_id=? AND state IN ('pending', 'held')",
                            (reason, now, study_id))
            return cur.rowcount > 0

    def next_due(self, now: float, window_open: bool) -> dict | None:
        sql = ("SELECT * FROM studies WHERE state='pending' AND next_attempt_at<=? "
               + ("" if window_open else "AND urgent=1 ")
               + "ORDER BY urgent DESC, queued_at, study_id LIMIT 1")
        row = self._conn().execute(sql, (now,)).fetchone()
        return dict(row) if row else None

    def urgent_due(self, now: float) -> bool:
        return self._conn().execute(
            "SELECT 1 FROM studies WHERE state='pending' AND urgent=1 AND next_attempt_at<=? LIMIT 1",
            (now,)).fetchone() is not None

    def next_attempt_time(self) -> float | None:
        row = self._conn().execute(
            "SELECT MIN(next_attempt_at) FROM studies WHERE state='pending'").fetchone()
        return row[0] if row else None

    def failed(self, study_id: str, now: float, error: str, retry_at: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET attempts=attempts+1, next_attempt_at=?, last_error=?, updated_at=? "
                      "WHERE study_id=? AND state='pending'", (retry_at, error, now, study_id))
            c.execute("INSERT INTO counters(name, value) VALUES('failures_total', 1) "
                      "ON CONFLICT(name) DO UPDATE SET value=value+1")
            self._set_last_error(c, now, study_id, error)

    def release_held(self, now: float, held_until: float) -> int:
        """Studies waiting no longer than ``held_until`` (the link's backoff, which
        held them) are due ``now``; those waiting longer wait for reasons of their own."""
        with self._tx() as c:
            cur = c.execute("UPDATE studies SET next_attempt_at=? WHERE state='pending' "
                            "AND next_attempt_at>? AND next_attempt_at<=?", (now, now, held_until))
            return cur.rowcount

    def _set_last_error(self, c, now: float, study_id: str | None, error: str) -> None:
        import json
        c.execute("INSERT INTO meta(key, value) VALUES('last_error', ?) "
                  "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                  (json.dumps({"at": now, "study": study_id, "message": error}),))

    def record_error(self, now: float, study_id: str | None, error: str) -> None:
        with self._tx() as c:
            self._set_last_error(c, now, study_id, error)

    def delivered(self, study_id: str, now: float, count: int, last_update: str | None,
                  delete_after: float | None) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET state='delivered', urgent=0, delivered_at=?, delivered_count=?, "
                      "delivered_last_update=?, delete_after=?, deleted_at=NULL, attempts=0, "
                      "next_attempt_at=NULL, last_error=NULL, updated_at=? WHERE study_id=?",
                      (now, count, last_update, delete_after, now, study_id))
            c.execute("INSERT INTO counters(name, value) VALUES('deliveries_total', 1) "
                      "ON CONFLICT(name) DO UPDATE SET value=value+1")

    def park(self, study_id: str, now: float, reason: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET state='parked', urgent=0, reason=?, last_error=?, "
                      "attempts=attempts+1, updated_at=? WHERE study_id=?",
                      (reason, reason, now, study_id))
            c.execute("INSERT INTO counters(name, value) VALUES('parked_total', 1) "
                      "ON CONFLICT(name) DO UPDATE SET value=value+1")
            self._set_last_error(c, now, study_id, reason)

    def gone(self, study_id: str, now: float, reason: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET state='gone', urgent=0, reason=?, updated_at=? WHERE study_id=?",
                      (reason, now, study_id))

    def deletions_due(self, now: float, limit: int = 100) -> list[dict]:
        return [dict(r) for r in self._conn().execute(
            "SELECT * FROM studies WHERE state='delivered' AND delete_after IS NOT NULL AND delete_after<=? "
            "AND deleted_at IS NULL AND awaiting_stable=0 ORDER BY delete_after LIMIT ?", (now, limit))]

    def mark_deleted(self, study_id: str, now: float, count: int) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET deleted_at=?, delete_after=NULL, updated_at=? WHERE study_id=?",
                      (now, now, study_id))
            c.execute("INSERT INTO counters(name, value) VALUES('deleted_instances_total', ?) "
                      "ON CONFLICT(name) DO UPDATE SET value=value+excluded.value", (count,))

    # --- flags (pathology) ------------------------------------------------

    def set_flag(self, study_uid: str, pathology: bool, now: float, source: str) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO flags(study_uid, pathology, flagged_at, source) VALUES(?,?,?,?) "
                      "ON CONFLICT(study_uid) DO UPDATE SET pathology=excluded.pathology, "
                      "flagged_at=excluded.flagged_at, source=excluded.source",
                      (study_uid, int(pathology), now, source))

    def is_flagged(self, study_uid: str | None) -> bool:
        if not study_uid:
            return False
        row = self._conn().execute("SELECT pathology FROM flags WHERE study_uid=?", (study_uid,)).fetchone()
        return bool(row and row[0])

    # --- views --------------------------------------------------------------

    def summary(self, now: float, deadline_seconds: float) -> dict[str, Any]:
        c = self._conn()
        by_state = {s: 0 for s in STATES}
        for r in c.execute("SELECT state, COUNT(*) FROM studies GROUP BY state"):
            by_state[r[0]] = r[1]
        pending = c.execute(
            "SELECT COUNT(*), MIN(queued_at), SUM(attempts>0), SUM(urgent), SUM(queued_at<=?) "
            "FROM studies WHERE state='pending'", (now - deadline_seconds,)).fetchone()
        awaiting = c.execute("SELECT COUNT(*) FROM studies WHERE awaiting_stable=1").fetchone()[0]
        deletions = c.execute("SELECT COUNT(*) FROM studies WHERE state='delivered' AND delete_after IS NOT NULL "
                              "AND deleted_at IS NULL").fetchone()[0]
        return {
            "by_state": by_state,
            "queue_depth": pending[0] or 0,
            "oldest_pending_queued_at": pending[1],
            "failing": pending[2] or 0,
            "urgent_pending": pending[3] or 0,
            "overdue": pending[4] or 0,
            "awaiting_stable": awaiting,
            "deletions_pending": deletions,
        }

    def parked(self) -> list[dict]:
        return [dict(r) for r in self._conn().execute(
            "SELECT study_id, study_uid, patient_id, reason, updated_at, attempts FROM studies "
            "WHERE state='parked' ORDER BY updated_at, study_id")]

    def rows(self, state: str | None = None) -> list[dict]:
        if state:
            return [dict(r) for r in self._conn().execute(
                "SELECT * FROM studies WHERE state=? ORDER BY study_id", (state,))]
        return [dict(r) for r in self._conn().execute("SELECT * FROM studies ORDER BY study_id")]
