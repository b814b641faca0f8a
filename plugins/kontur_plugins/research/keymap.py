# SPDX-License-Identifier: AGPL-3.0-or-later
"""The pseudonym <-> identity map, kept at the MIAC (seed 001: identity
replaced by a key, re-personalisation when an image returns to clinical use).

A sqlite3 file beside the exporting node's other state (WAL, synchronous
FULL), backed up with it; never on the research node.  Every look-up for
re-identification is written to its audit table -- who, when, why, what and
the answer -- before the answer is given.
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
  pseudonym TEXT PRIMARY KEY, issuer TEXT NOT NULL, patient_id TEXT NOT NULL,
  patient_name TEXT NOT NULL, birth_date TEXT NOT NULL, first_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
  new_study_uid TEXT PRIMARY KEY, original_study_uid TEXT NOT NULL, pseudonym TEXT NOT NULL,
  feed TEXT NOT NULL, exported_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS exported (
  feed TEXT NOT NULL, instance TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (feed, instance));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  at REAL NOT NULL, who TEXT NOT NULL, reason TEXT NOT NULL, asked TEXT NOT NULL, answer TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Person:
    pseudonym: str
    issuer: str
    patient_id: str
    patient_name: str
    birth_date: str
    original_study_uid: str | None = None


class KeyMap:
    def __init__(self, path: str):
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def record(self, *, pseudonym: str, issuer: str, patient_id: str, patient_name: str, birth_date: str,
               new_study_uid: str, original_study_uid: str, feed: str) -> None:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT OR IGNORE INTO patients VALUES (?,?,?,?,?,?)",
                            (pseudonym, issuer, patient_id, patient_name, birth_date, now))
            self.db.execute("INSERT OR IGNORE INTO studies VALUES (?,?,?,?,?)",
                            (new_study_uid, original_study_uid, pseudonym, feed, now))

    def exported(self, feed: str, instance: str) -> bool:
        return self.db.execute("SELECT 1 FROM exported WHERE feed = ? AND instance = ?",
                               (feed, instance)).fetchone() is not None

    def mark_exported(self, feed: str, instance: str) -> None:
        with self.db:
            self.db.execute("INSERT OR IGNORE INTO exported VALUES (?,?,?)", (feed, instance, time.time()))

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    def _find(self, key: str) -> Person | None:
        row = self.db.execute("SELECT pseudonym, issuer, patient_id, patient_name, birth_date FROM patients "
                              "WHERE pseudonym = ?", (key,)).fetchone()
        if row:
            return Person(*row)
        row = self.db.execute("SELECT p.pseudonym, p.issuer, p.patient_id, p.patient_name, p.birth_date, "
                              "s.original_study_uid FROM studies s JOIN patients p USING (pseudonym) "
                              "WHERE s.new_study_uid = ?", (key,)).fetchone()
        return Person(*row) if row else None

    def reidentify(self, key: str, *, who: str, reason: str) -> Person | None:
        """The identity behind a pseudonym or a research copy's Study Instance UID; audited first."""
        person = self._find(key)
        answer = "found" if person else "unknown pseudonym or study"
        self.audit(who=who, reason=reason, asked=key, answer=answer)
        return person

    def original_studies(self, key: str) -> list[str]:
        """The original Study Instance UIDs behind a research study UID, or behind every study of a
        pseudonym, in the order they were exported."""
        rows = self.db.execute("SELECT original_study_uid FROM studies WHERE new_study_uid = ? OR pseudonym = ? "
                               "ORDER BY exported_at, rowid", (key, key)).fetchall()
        return list(dict.fromkeys(r[0] for r in rows))

    def audit(self, *, who: str, reason: str, asked: str, answer: str) -> None:
        with self.db:
            self.db.execute("INSERT INTO audit VALUES (?,?,?,?,?)", (time.time(), who, reason, asked, answer))

    def audit_trail(self) -> list[tuple]:
        return self.db.execute("SELECT at, who, reason, asked, answer FROM audit ORDER BY rowid").fetchall()
