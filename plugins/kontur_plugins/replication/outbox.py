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
sends only what the upstream still lacks.

Beside the studies: ``corrections`` (what the upstream must retire or replace
after a correction here, retried until done), ``recheck`` (instances that
arrived again for a study already delivered: their content is compared with the
upstream's copy), ``fullpass_todo`` (the running full pass's remaining studies,
so a pass resumes after a restart), ``audit`` (corrections and operator actions:
who, when, what, why) and ``meta`` (the change feed's position, the full pass's
state, the last error).

Writes are transactions; each thread has its own connection.  A transaction
that SQLite rolled back by itself (a full disk, an I/O error) is never
committed piecemeal: the commit is refused, so the caller's position never
covers a write that did not happen.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
from typing import Any, Iterable, Iterator

STATES = ("idle", "pending", "delivered", "parked", "held", "gone")
SCHEMA_VERSION = 2

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
-- a study's way through this node (issue 12): archived here (complete), validated or
-- quarantined, delivered upstream; read in order by whoever tells others (the HL7 service)
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    study_id TEXT NOT NULL,
    study_uid TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS events_study ON events(study_id, kind);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- the transfer package (issue 10): the latest validation of each study, and releases
CREATE TABLE IF NOT EXISTS validation (
    study_id TEXT PRIMARY KEY,
    study_uid TEXT,
    patient_id TEXT,
    state TEXT NOT NULL,
    reasons TEXT NOT NULL,
    notes TEXT NOT NULL,
    mode TEXT NOT NULL,
    checked_at REAL NOT NULL,
    released_at REAL,
    released_by TEXT,
    release_reason TEXT
);
CREATE INDEX IF NOT EXISTS validation_state ON validation(state);
"""

#: schema 2 (issue 9): set digests, outcomes, corrections, the resumable full pass, the audit trail
MIGRATION_2 = [
    "ALTER TABLE studies ADD COLUMN delivered_digest TEXT",
    "ALTER TABLE studies ADD COLUMN last_outcome TEXT",
    "ALTER TABLE studies ADD COLUMN modified_from TEXT",
    "ALTER TABLE studies ADD COLUMN divergent INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE studies ADD COLUMN storage_error TEXT",
    "CREATE INDEX IF NOT EXISTS studies_modified_from ON studies(modified_from)",
    """CREATE TABLE IF NOT EXISTS corrections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        kind TEXT NOT NULL,
        study_id TEXT,
        retire TEXT NOT NULL,
        requires TEXT NOT NULL,
        reason TEXT NOT NULL,
        actor TEXT,
        state TEXT NOT NULL DEFAULT 'waiting',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        last_error TEXT,
        done_at REAL,
        result TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS corrections_state ON corrections(state, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS corrections_study ON corrections(study_id, state)",
    "CREATE TABLE IF NOT EXISTS recheck (instance_id TEXT PRIMARY KEY, study_id TEXT NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS recheck_study ON recheck(study_id)",
    "CREATE TABLE IF NOT EXISTS fullpass_todo (study_id TEXT PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT,
        action TEXT NOT NULL,
        subject TEXT,
        reason TEXT,
        detail TEXT
    )""",
]

#: correction states: blocked (the replaced resource still exists here), waiting (for its
#: replacement to be delivered), pending (due), done, refused (for good)
CORRECTION_OPEN = ("blocked", "waiting", "pending")


class TransactionLost(sqlite3.OperationalError):
    """SQLite rolled the transaction back by itself (disk full, I/O error):
    nothing of it may be committed."""


class Outbox:
    def __init__(self, path: str):
        self.path = path
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.RLock()
        with self._write_lock:
            c = self._conn()
            c.executescript(SCHEMA)
            self._migrate(c)

    def _migrate(self, c: sqlite3.Connection) -> None:
        row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 1
        if version >= SCHEMA_VERSION:
            return
        c.execute("BEGIN IMMEDIATE")
        try:
            cols = {r[1] for r in c.execute("PRAGMA table_info(studies)")}
            for stmt in MIGRATION_2:
                if stmt.startswith("ALTER TABLE studies ADD COLUMN"):
                    if stmt.split()[5] in cols:
                        continue
                c.execute(stmt)
            c.execute("INSERT INTO meta(key, value) VALUES('schema_version', ?) "
                      "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(SCHEMA_VERSION),))
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

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

    def transaction(self):
        """A write transaction on this database, for the other stages that keep
        their state here (the transfer package)."""
        return self._tx()

    def query(self, sql: str, args: tuple = ()) -> list[dict]:
        return [dict(r) for r in self._conn().execute(sql, args)]

    @staticmethod
    def event(c, now: float, kind: str, study_id: str, study_uid: str | None, detail: str | None = None) -> None:
        """One step of a study's way through this node, in the caller's transaction."""
        c.execute("INSERT INTO events(at, kind, study_id, study_uid, detail) VALUES(?,?,?,?,?)",
                  (now, kind, study_id, study_uid, detail))

    def prune_events(self, before: float) -> int:
        """Forget study events older than ``before`` (they were told long ago, or nobody reads them)."""
        with self._tx() as c:
            return c.execute("DELETE FROM events WHERE at<?", (before,)).rowcount

    def events_after(self, after: int, limit: int = 200) -> list[dict]:
        return [dict(r) for r in self._conn().execute(
            "SELECT * FROM events WHERE id>? ORDER BY id LIMIT ?", (after, limit))]

    def audit_entry(self, c, now: float, actor: str | None, action: str, subject: str | None = None,
                    reason: str | None = None, detail: dict | None = None) -> None:
        """An audit entry inside the caller's transaction."""
        self._audit(c, now, actor, action, subject, reason, detail)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested calls on one thread join the outer one.

        If SQLite ended the transaction by itself (``SQLITE_FULL``,
        ``SQLITE_IOERR`` roll it back), later statements would run in
        autocommit mode one by one; the commit sees that and raises
        :class:`TransactionLost` instead of pretending the whole succeeded."""
        c = self._conn()
        if self._local.depth:
            self._local.depth += 1
            try:
                if not c.in_transaction:
                    raise TransactionLost("the outer transaction was rolled back by SQLite")
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
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise
            self._local.depth = 0
            if not c.in_transaction:
                raise TransactionLost("SQLite rolled the transaction back by itself (disk full or I/O error); "
                                      "nothing of it was committed")
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

    def get_meta_json(self, key: str) -> Any:
        v = self.get_meta(key)
        if v is None:
            return None
        try:
            return json.loads(v)
        except ValueError:
            return None

    def set_meta(self, key: str, value: Any) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO meta(key, value) VALUES(?, ?) "
                      "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, None if value is None else str(value)))

    def set_meta_json(self, key: str, value: Any) -> None:
        self.set_meta(key, json.dumps(value, sort_keys=True, ensure_ascii=False))

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

    def get_many(self, study_ids: Iterable[str]) -> dict[str, dict]:
        ids = list(study_ids)
        out: dict[str, dict] = {}
        c = self._conn()
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            q = "SELECT * FROM studies WHERE study_id IN (%s)" % ",".join("?" * len(chunk))
            for r in c.execute(q, chunk):
                out[r["study_id"]] = dict(r)
        return out

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
            before = c.execute("SELECT awaiting_stable, study_uid FROM studies WHERE study_id=?", (study_id,)).fetchone()
            c.execute("INSERT INTO studies(study_id, updated_at) VALUES(?,?) ON CONFLICT(study_id) DO "
                      "UPDATE SET awaiting_stable=0, updated_at=excluded.updated_at", (study_id, now))
            # archived here: when it became complete -- also when the full pass sent it before
            # the feed read its stable event (once: a stable event without new instances is not news)
            if (before is None or before["awaiting_stable"]
                    or c.execute("SELECT 1 FROM events WHERE study_id=? AND kind='archived' LIMIT 1",
                                 (study_id,)).fetchone() is None):
                self.event(c, now, "archived", study_id, before["study_uid"] if before is not None else None)
            return dict(c.execute("SELECT * FROM studies WHERE study_id=?", (study_id,)).fetchone())

    def set_modified_from(self, study_id: str, source_id: str | None) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET modified_from=? WHERE study_id=?", (source_id, study_id))

    def modified_from(self, source_id: str) -> list[dict]:
        """Studies made here from ``source_id`` by Orthanc's modify."""
        return [dict(r) for r in self._conn().execute(
            "SELECT * FROM studies WHERE modified_from=? ORDER BY study_id", (source_id,))]

    def modified_rows(self) -> list[dict]:
        return [dict(r) for r in self._conn().execute(
            "SELECT * FROM studies WHERE modified_from IS NOT NULL ORDER BY study_id")]

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
                      "attempts=0, next_attempt_at=?, last_error=NULL, last_outcome=NULL, updated_at=? "
                      "WHERE study_id=?",
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
            "SELECT MIN(t) FROM (SELECT MIN(next_attempt_at) AS t FROM studies WHERE state='pending' "
            "UNION ALL SELECT MIN(next_attempt_at) FROM corrections WHERE state='pending')").fetchone()
        return row[0] if row else None

    def failed(self, study_id: str, now: float, error: str, retry_at: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET attempts=attempts+1, next_attempt_at=?, last_error=?, "
                      "last_outcome='failed', updated_at=? WHERE study_id=? AND state='pending'",
                      (retry_at, error, now, study_id))
            c.execute("INSERT INTO counters(name, value) VALUES('failures_total', 1) "
                      "ON CONFLICT(name) DO UPDATE SET value=value+1")
            self._set_last_error(c, now, study_id, error)

    def paused(self, study_id: str, now: float, why: str) -> None:
        """Sending stopped on purpose (window closed, urgent study first): not a failure."""
        with self._tx() as c:
            c.execute("UPDATE studies SET last_outcome='paused', updated_at=? WHERE study_id=? AND state='pending'",
                      (now, study_id))

    def storage_lost(self, study_id: str, now: float, error: str, retry_at: float) -> None:
        """This node cannot read the study's files: an alarm, never "deleted meanwhile"."""
        with self._tx() as c:
            c.execute("UPDATE studies SET attempts=attempts+1, next_attempt_at=?, last_error=?, storage_error=?, "
                      "last_outcome='failed', updated_at=? WHERE study_id=?",
                      (retry_at, error, error, now, study_id))
            c.execute("INSERT INTO counters(name, value) VALUES('storage_errors_total', 1) "
                      "ON CONFLICT(name) DO UPDATE SET value=value+1")
            self._set_last_error(c, now, study_id, error)

    def release_held(self, now: float, held_until: float) -> int:
        """Studies waiting no longer than ``held_until`` (the link's backoff, which
        held them) are due ``now``; those waiting longer wait for reasons of their own."""
        with self._tx() as c:
            cur = c.execute("UPDATE studies SET next_attempt_at=? WHERE state='pending' "
                            "AND next_attempt_at>? AND next_attempt_at<=?", (now, now, held_until))
            c.execute("UPDATE corrections SET next_attempt_at=? WHERE state='pending' "
                      "AND next_attempt_at>? AND next_attempt_at<=?", (now, now, held_until))
            return cur.rowcount

    def _set_last_error(self, c, now: float, study_id: str | None, error: str) -> None:
        c.execute("INSERT INTO meta(key, value) VALUES('last_error', ?) "
                  "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                  (json.dumps({"at": now, "study": study_id, "message": error}),))

    def record_error(self, now: float, study_id: str | None, error: str) -> None:
        with self._tx() as c:
            self._set_last_error(c, now, study_id, error)

    def delivered(self, study_id: str, now: float, count: int, last_update: str | None,
                  delete_after: float | None, digest: str | None = None) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET state='delivered', urgent=0, delivered_at=?, delivered_count=?, "
                      "delivered_last_update=?, delivered_digest=?, delete_after=?, deleted_at=NULL, attempts=0, "
                      "next_attempt_at=NULL, last_error=NULL, last_outcome='delivered', storage_error=NULL, "
                      "divergent=0, updated_at=? WHERE study_id=?",
                      (now, count, last_update, digest, delete_after, now, study_id))
            c.execute("DELETE FROM recheck WHERE study_id=?", (study_id,))
            uid = c.execute("SELECT study_uid FROM studies WHERE study_id=?", (study_id,)).fetchone()
            self.event(c, now, "delivered", study_id, uid[0] if uid else None, f"{count} instances")
            c.execute("INSERT INTO counters(name, value) VALUES('deliveries_total', 1) "
                      "ON CONFLICT(name) DO UPDATE SET value=value+1")

    def record_verified(self, study_id: str, now: float, count: int, last_update: str | None,
                        digest: str, *, divergent: int = 0) -> None:
        """The full pass found the upstream holding everything of a study (perhaps
        one never sent by this plugin): remember it as delivered, without
        counting a delivery."""
        with self._tx() as c:
            c.execute("INSERT INTO studies(study_id, updated_at) VALUES(?, ?) ON CONFLICT(study_id) DO NOTHING",
                      (study_id, now))
            c.execute("UPDATE studies SET state=CASE WHEN state IN ('idle', 'gone') THEN 'delivered' ELSE state END, "
                      "delivered_at=COALESCE(delivered_at, ?), delivered_count=?, delivered_last_update=?, "
                      "delivered_digest=?, divergent=?, storage_error=NULL, updated_at=? WHERE study_id=?",
                      (now, count, last_update, digest, divergent, now, study_id))

    def set_divergent(self, study_id: str, extra: int) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET divergent=? WHERE study_id=?", (extra, study_id))

    def divergent(self) -> list[dict]:
        return [dict(r) for r in self._conn().execute(
            "SELECT study_id, study_uid, patient_id, divergent, delivered_count, updated_at FROM studies "
            "WHERE divergent>0 ORDER BY study_id")]

    def park(self, study_id: str, now: float, reason: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE studies SET state='parked', urgent=0, reason=?, last_error=?, last_outcome='parked', "
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

    # --- instances to compare again -----------------------------------------

    def add_recheck(self, instance_id: str, study_id: str, now: float) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO recheck(instance_id, study_id, at) VALUES(?,?,?) "
                      "ON CONFLICT(instance_id) DO UPDATE SET study_id=excluded.study_id, at=excluded.at",
                      (instance_id, study_id, now))

    def rechecks(self, study_id: str) -> set[str]:
        return {r[0] for r in self._conn().execute("SELECT instance_id FROM recheck WHERE study_id=?", (study_id,))}

    # --- corrections ----------------------------------------------------------

    def add_correction(self, now: float, *, kind: str, study_id: str | None, retire: list[str],
                       requires: list[str], reason: str, actor: str | None, due: bool) -> int:
        """A correction the upstream must apply: retire ``retire`` (resource IDs
        it holds from this node) once it holds every study in ``requires``.
        ``due`` False: it waits until ``study_id`` is delivered."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO corrections(created_at, kind, study_id, retire, requires, reason, actor, state, "
                "next_attempt_at) VALUES(?,?,?,?,?,?,?,?,?)",
                (now, kind, study_id, json.dumps(sorted(set(retire))), json.dumps(sorted(set(requires))), reason,
                 actor, "pending" if due else "waiting", now if due else None))
            self._audit(c, now, actor, f"correction queued ({kind})", study_id, reason,
                        {"correction": cur.lastrowid, "retire": sorted(set(retire)), "requires": sorted(set(requires))})
            return int(cur.lastrowid)

    def open_corrections(self, study_id: str | None = None) -> list[dict]:
        q = "SELECT * FROM corrections WHERE state IN ('blocked', 'waiting', 'pending')"
        args: tuple = ()
        if study_id is not None:
            q += " AND study_id=?"
            args = (study_id,)
        return [_correction(r) for r in self._conn().execute(q + " ORDER BY id", args)]

    def corrections_of(self, study_id: str) -> list[dict]:
        """Every correction recorded for ``study_id``, in any state."""
        return [_correction(r) for r in self._conn().execute(
            "SELECT * FROM corrections WHERE study_id=? ORDER BY id", (study_id,))]

    def blocked_corrections(self, resource_id: str) -> list[dict]:
        return [c for c in self.corrections(["blocked"], limit=10000) if resource_id in c["retire"]]

    def set_correction_state(self, cid: int, state: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE corrections SET state=?, next_attempt_at=CASE WHEN ?='pending' THEN "
                      "COALESCE(next_attempt_at, 0) ELSE NULL END WHERE id=?", (state, state, cid))

    def release_corrections(self, study_id: str, now: float) -> int:
        """``study_id`` was delivered: the corrections waiting for it are due."""
        with self._tx() as c:
            cur = c.execute("UPDATE corrections SET state='pending', next_attempt_at=? "
                            "WHERE study_id=? AND state='waiting'", (now, study_id))
            return cur.rowcount

    def repoint_corrections(self, old_study: str, new_study: str) -> int:
        """``old_study`` was itself replaced here before its corrections ran: they
        now wait for ``new_study``."""
        with self._tx() as c:
            rows = c.execute("SELECT id, requires, state FROM corrections WHERE study_id=? AND state IN "
                             "('blocked', 'waiting', 'pending')", (old_study,)).fetchall()
            for r in rows:
                req = [x for x in json.loads(r["requires"]) if x != old_study] + [new_study]
                state = "blocked" if r["state"] == "blocked" else "waiting"
                c.execute("UPDATE corrections SET study_id=?, requires=?, state=?, next_attempt_at=NULL "
                          "WHERE id=?", (new_study, json.dumps(sorted(set(req))), state, r["id"]))
            return len(rows)

    def next_correction(self, now: float) -> dict | None:
        row = self._conn().execute(
            "SELECT * FROM corrections WHERE state='pending' AND next_attempt_at<=? ORDER BY id LIMIT 1",
            (now,)).fetchone()
        return _correction(row) if row else None

    def correction_done(self, cid: int, now: float, result: dict, actor: str | None = None) -> None:
        with self._tx() as c:
            row = c.execute("SELECT * FROM corrections WHERE id=?", (cid,)).fetchone()
            c.execute("UPDATE corrections SET state='done', done_at=?, result=?, last_error=NULL WHERE id=?",
                      (now, json.dumps(result, sort_keys=True), cid))
            if row is not None:
                self._audit(c, now, actor or row["actor"], f"correction applied upstream ({row['kind']})",
                            row["study_id"], row["reason"], {"correction": cid, **result})
            c.execute("INSERT INTO counters(name, value) VALUES('corrections_total', 1) "
                      "ON CONFLICT(name) DO UPDATE SET value=value+1")

    def correction_failed(self, cid: int, now: float, error: str, retry_at: float | None) -> None:
        """``retry_at`` None: the upstream refused it for good (kept, visible, never dropped)."""
        with self._tx() as c:
            c.execute("UPDATE corrections SET attempts=attempts+1, last_error=?, next_attempt_at=?, "
                      "state=CASE WHEN ? IS NULL THEN 'refused' ELSE state END WHERE id=?",
                      (error, retry_at, retry_at, cid))
            self._set_last_error(c, now, None, f"correction {cid}: {error}")

    def corrections(self, states: Iterable[str] | None = None, limit: int = 200) -> list[dict]:
        q = "SELECT * FROM corrections"
        args: list = []
        if states:
            st = list(states)
            q += " WHERE state IN (%s)" % ",".join("?" * len(st))
            args += st
        q += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [_correction(r) for r in self._conn().execute(q, args)]

    def correction_counts(self) -> dict[str, int]:
        out = {"blocked": 0, "waiting": 0, "pending": 0, "done": 0, "refused": 0}
        for r in self._conn().execute("SELECT state, COUNT(*) FROM corrections GROUP BY state"):
            out[r[0]] = r[1]
        return out

    # --- the audit trail -------------------------------------------------------

    def _audit(self, c, now: float, actor: str | None, action: str, subject: str | None, reason: str | None,
               detail: dict | None) -> None:
        c.execute("INSERT INTO audit(at, actor, action, subject, reason, detail) VALUES(?,?,?,?,?,?)",
                  (now, actor, action, subject, reason,
                   json.dumps(detail or {}, sort_keys=True, ensure_ascii=False)))

    def audit(self, now: float, actor: str | None, action: str, subject: str | None = None,
              reason: str | None = None, detail: dict | None = None) -> None:
        with self._tx() as c:
            self._audit(c, now, actor, action, subject, reason, detail)

    def audit_log(self, limit: int = 200) -> list[dict]:
        out = []
        for r in self._conn().execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,)):
            d = dict(r)
            d["detail"] = json.loads(d["detail"] or "{}")
            out.append(d)
        return out

    # --- the full pass's work list ----------------------------------------------

    def fullpass_fill(self, study_ids: Iterable[str]) -> int:
        with self._tx() as c:
            c.execute("DELETE FROM fullpass_todo")
            n = 0
            batch: list[tuple[str]] = []
            for sid in study_ids:
                batch.append((sid,))
                if len(batch) >= 5000:
                    c.executemany("INSERT OR IGNORE INTO fullpass_todo(study_id) VALUES(?)", batch)
                    n += len(batch)
                    batch = []
            if batch:
                c.executemany("INSERT OR IGNORE INTO fullpass_todo(study_id) VALUES(?)", batch)
                n += len(batch)
            return n

    def fullpass_page(self, after: str, limit: int) -> list[str]:
        """Keyset paging: the next ``limit`` study IDs after ``after`` (primary-key order)."""
        return [r[0] for r in self._conn().execute(
            "SELECT study_id FROM fullpass_todo WHERE study_id>? ORDER BY study_id LIMIT ?", (after, limit))]

    def fullpass_remaining(self, after: str) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM fullpass_todo WHERE study_id>?", (after,)).fetchone()[0]

    def fullpass_clear(self) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM fullpass_todo")

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

    def flagged(self, limit: int = 1000) -> dict[str, Any]:
        """The studies flagged pathology, the most recently flagged first (at most ``limit``)."""
        c = self._conn()
        rows = c.execute("SELECT study_uid, flagged_at, source FROM flags WHERE pathology=1 "
                         "ORDER BY flagged_at DESC LIMIT ?", (int(limit),)).fetchall()
        total = c.execute("SELECT COUNT(*) FROM flags WHERE pathology=1").fetchone()[0]
        return {"total": total, "flagged": [{"study_uid": r[0], "flagged_at": round(r[1], 1), "source": r[2]}
                                            for r in rows]}

    # --- views --------------------------------------------------------------

    def summary(self, now: float, deadline_seconds: float) -> dict[str, Any]:
        c = self._conn()
        by_state = {s: 0 for s in STATES}
        for r in c.execute("SELECT state, COUNT(*) FROM studies GROUP BY state"):
            by_state[r[0]] = r[1]
        pending = c.execute(
            "SELECT COUNT(*), MIN(queued_at), SUM(last_outcome='failed'), SUM(urgent), SUM(queued_at<=?) "
            "FROM studies WHERE state='pending'", (now - deadline_seconds,)).fetchone()
        awaiting = c.execute("SELECT COUNT(*) FROM studies WHERE awaiting_stable=1").fetchone()[0]
        deletions = c.execute("SELECT COUNT(*) FROM studies WHERE state='delivered' AND delete_after IS NOT NULL "
                              "AND deleted_at IS NULL").fetchone()[0]
        storage = c.execute("SELECT COUNT(*) FROM studies WHERE storage_error IS NOT NULL").fetchone()[0]
        divergent = c.execute("SELECT COUNT(*) FROM studies WHERE divergent>0").fetchone()[0]
        return {
            "by_state": by_state,
            "queue_depth": pending[0] or 0,
            "oldest_pending_queued_at": pending[1],
            "failing": pending[2] or 0,
            "urgent_pending": pending[3] or 0,
            "overdue": pending[4] or 0,
            "awaiting_stable": awaiting,
            "deletions_pending": deletions,
            "storage_errors": storage,
            "divergent": divergent,
        }

    def storage_errors(self) -> list[dict]:
        return [dict(r) for r in self._conn().execute(
            "SELECT study_id, study_uid, storage_error, updated_at FROM studies WHERE storage_error IS NOT NULL "
            "ORDER BY study_id")]

    def parked(self) -> list[dict]:
        return [dict(r) for r in self._conn().execute(
            "SELECT study_id, study_uid, patient_id, reason, updated_at, attempts FROM studies "
            "WHERE state='parked' ORDER BY updated_at, study_id")]

    def rows(self, state: str | None = None) -> list[dict]:
        if state:
            return [dict(r) for r in self._conn().execute(
                "SELECT * FROM studies WHERE state=? ORDER BY study_id", (state,))]
        return [dict(r) for r in self._conn().execute("SELECT * FROM studies ORDER BY study_id")]


def _correction(row) -> dict:
    d = dict(row)
    d["retire"] = json.loads(d["retire"])
    d["requires"] = json.loads(d["requires"])
    d["result"] = json.loads(d["result"]) if d.get("result") else None
    return d
