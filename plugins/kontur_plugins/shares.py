# SPDX-License-Identifier: AGPL-3.0-or-later
"""Who may open a study on the TsAMI through the viewer link, and the shares
that widen that for a while: double reading and second opinion (issue 12,
seed 002).  Pure decisions plus a small sqlite3 store in the plugin's state
directory, the same way the outbox keeps its state.

On the TsAMI a user of a hospital with its own archive or gateway (a
*scoped* user: ``KonturRoles[login]["hospital"]``) opens only studies of
that hospital -- known by their Issuer of Patient ID, which the hospital's
node stamps at ingest -- and studies shared with it.  A share names one
study (its Study Instance UID) and one hospital, has an end, and every
grant, revocation and use of it is written to the audit table, which is
never pruned.  Region-wide users (no hospital; a reference centre's) are
not scoped.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass

#: a share's length when the operator names none, and the longest one
DEFAULT_DAYS, MAX_DAYS = 7, 90

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shares (
    id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, hospital TEXT NOT NULL, reason TEXT NOT NULL,
    granted_by TEXT NOT NULL, granted_at REAL NOT NULL, expires_at REAL NOT NULL,
    revoked_by TEXT, revoked_at REAL);
CREATE INDEX IF NOT EXISTS shares_study ON shares(study_uid, hospital);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, who TEXT NOT NULL, what TEXT NOT NULL,
    study_uid TEXT NOT NULL, hospital TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
"""


class ShareError(ValueError):
    """A share that cannot be made as asked; the text says what was expected."""


def hospital_of(issuer: str, issuers: dict) -> str | None:
    """The hospital whose node stamped this Issuer of Patient ID, if any."""
    return issuers.get((issuer or "").strip()) or None


def may_view(scope: str | None, study_hospital: str | None, shared: bool) -> bool:
    """Region-wide users (no scope) see every study here; a scoped user sees
    their hospital's studies and those shared with their hospital."""
    if scope is None:
        return True
    return shared or (study_hospital is not None and study_hospital == scope)


def check_request(body: dict, hospitals: set | frozenset) -> tuple[str, str, int, str]:
    """A share request's (study, hospital, days, reason), checked; raises :class:`ShareError`."""
    if not isinstance(body, dict):
        raise ShareError("expected a JSON object with study, hospital, days and reason")
    study = str(body.get("study") or "").strip()
    hospital = str(body.get("hospital") or "").strip()
    reason = str(body.get("reason") or "").strip()
    days = body.get("days", DEFAULT_DAYS)
    if not study or len(study) > 64:
        raise ShareError("study: expected a Study Instance UID or an accession number")
    if hospital not in hospitals:
        raise ShareError(f"hospital: {hospital or '(none)'!r} is not a hospital of this region; expected one of "
                         + ", ".join(sorted(hospitals)))
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ShareError(f"days: {days!r}; expected a whole number of days from 1 to {MAX_DAYS}")
    if not reason or len(reason) > 200 or any(ord(c) < 32 for c in reason):
        raise ShareError("reason: expected why the study is shared (double reading, second opinion, ...), "
                         "1 to 200 characters on one line")
    return study, hospital, days, reason


@dataclass(frozen=True)
class Share:
    id: int
    study_uid: str
    hospital: str
    reason: str
    granted_by: str
    granted_at: float
    expires_at: float
    revoked_by: str | None
    revoked_at: float | None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if now < self.expires_at else "expired"

    def as_json(self, now: float) -> dict:
        iso = lambda t: (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t is not None else None)  # noqa: E731
        return {"id": self.id, "study_uid": self.study_uid, "hospital": self.hospital, "reason": self.reason,
                "granted_by": self.granted_by, "granted_at": iso(self.granted_at),
                "expires_at": iso(self.expires_at), "revoked_by": self.revoked_by,
                "revoked_at": iso(self.revoked_at), "state": self.state(now)}


class Shares:
    """The shares and their audit trail (sqlite3, WAL, synchronous=FULL)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with closing(self._conn()) as c:
            c.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        c.row_factory = sqlite3.Row
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        return c

    def _audit(self, c, now: float, who: str, what: str, study_uid: str, hospital: str, detail: str = "") -> None:
        c.execute("INSERT INTO audit(at, who, what, study_uid, hospital, detail) VALUES (?,?,?,?,?,?)",
                  (now, who, what, study_uid, hospital, detail))

    def grant(self, study_uid: str, hospital: str, days: int, reason: str, by: str, now: float) -> Share:
        """A share of ``study_uid`` with ``hospital`` for ``days`` (an active one
        for the same pair is extended, never duplicated)."""
        c = self._conn()
        try:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute("SELECT id FROM shares WHERE study_uid=? AND hospital=? AND revoked_at IS NULL "
                            "AND expires_at>?", (study_uid, hospital, now)).fetchone()
            expires = now + days * 86400
            if row:
                c.execute("UPDATE shares SET expires_at=MAX(expires_at, ?), reason=? WHERE id=?",
                          (expires, reason, row["id"]))
                share_id = row["id"]
                self._audit(c, now, by, "share extended", study_uid, hospital, f"{days} days: {reason}")
            else:
                share_id = c.execute("INSERT INTO shares(study_uid, hospital, reason, granted_by, granted_at, "
                                     "expires_at) VALUES (?,?,?,?,?,?)",
                                     (study_uid, hospital, reason, by, now, expires)).lastrowid
                self._audit(c, now, by, "shared", study_uid, hospital, f"{days} days: {reason}")
            c.execute("COMMIT")
            return self.get(share_id)
        finally:
            c.close()

    def revoke(self, share_id: int, by: str, now: float) -> Share | None:
        c = self._conn()
        try:
            c.execute("BEGIN IMMEDIATE")
            row = c.execute("SELECT study_uid, hospital FROM shares WHERE id=? AND revoked_at IS NULL",
                            (share_id,)).fetchone()
            if row:
                c.execute("UPDATE shares SET revoked_by=?, revoked_at=? WHERE id=?", (by, now, share_id))
                self._audit(c, now, by, "share revoked", row["study_uid"], row["hospital"])
            c.execute("COMMIT")
        finally:
            c.close()
        return self.get(share_id)

    def get(self, share_id: int) -> Share | None:
        with closing(self._conn()) as c:
            row = c.execute("SELECT * FROM shares WHERE id=?", (share_id,)).fetchone()
        return Share(**dict(row)) if row else None

    def all(self) -> list[Share]:
        with closing(self._conn()) as c:
            return [Share(**dict(r)) for r in c.execute("SELECT * FROM shares ORDER BY id")]

    def active(self, hospital: str, study_uid: str, now: float) -> Share | None:
        with closing(self._conn()) as c:
            row = c.execute("SELECT * FROM shares WHERE study_uid=? AND hospital=? AND revoked_at IS NULL "
                            "AND expires_at>? ORDER BY id DESC LIMIT 1", (study_uid, hospital, now)).fetchone()
        return Share(**dict(row)) if row else None

    def opened(self, share: Share, who: str, now: float) -> None:
        """A scoped user opened a study through a share: audited."""
        with closing(self._conn()) as c:
            self._audit(c, now, who, "opened through share", share.study_uid, share.hospital, f"share {share.id}")

    def audit(self, study_uid: str | None = None) -> list[dict]:
        with closing(self._conn()) as c:
            q, args = "SELECT * FROM audit", ()
            if study_uid:
                q, args = q + " WHERE study_uid=?", (study_uid,)
            return [dict(r) for r in c.execute(q + " ORDER BY id", args)]


def handle(store: Shares | None, method: str, uri: str, body, caller: str, hospitals, find_study, now: float):
    """``/kontur/shares`` on the TsAMI: (status, JSON-able answer).
    ``find_study(value)``: the Study Instance UIDs here of a UID or accession."""
    if store is None:
        return 404, {"error": "studies are shared on the TsAMI; this node keeps no shares"}
    path = uri.rstrip("/")
    if path == "/kontur/shares":
        if method == "GET":
            return 200, {"shares": [s.as_json(now) for s in store.all()], "audit": store.audit()}
        if method != "POST":
            return 405, {"error": "expected GET or POST"}
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": "the request is not JSON; expected {study, hospital, days, reason}"}
        try:
            study, hospital, days, reason = check_request(data, frozenset(hospitals))
        except ShareError as exc:
            return 400, {"error": str(exc)}
        uids = find_study(study)
        if not uids:
            return 404, {"error": f"no study {study!r} (Study Instance UID or accession number) is in this "
                                  "archive: only a study delivered to the TsAMI can be shared"}
        if len(uids) > 1:
            return 409, {"error": f"accession number {study!r} names {len(uids)} studies here; give the Study "
                                  "Instance UID", "studies": uids}
        share = store.grant(uids[0], hospital, days, reason, caller, now)
        return 200, {"share": share.as_json(now)}
    if method != "DELETE":
        return 405, {"error": "expected DELETE /kontur/shares/ID"}
    share_id = int(path.rsplit("/", 1)[-1])
    share = store.get(share_id)
    if share is None:
        return 404, {"error": f"there is no share {share_id}"}
    return 200, {"share": store.revoke(share_id, caller, now).as_json(now)}
