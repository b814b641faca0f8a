# SPDX-License-Identifier: AGPL-3.0-or-later
"""The service's durable state: every message received (accepted or not,
its raw bytes and the ACK it got), the orders and their worklist items.

The node's PostgreSQL where it has one, else SQLite in WAL mode with
``synchronous=FULL`` (:mod:`.db`): a message is acknowledged ``AA`` only
after the transaction that stores it has committed, so an acknowledged order
survives ``kill -9`` and a power cut.  A message whose
(MSH-4, MSH-10) was seen before is answered with the ACK it got then.
Orthanc's plugin reads the items (read-only) to answer worklist C-FINDs.
"""
from __future__ import annotations

import datetime as dt
import json
import threading
import time

from . import mpps, notify
from . import results as results_mod
from .db import open_db
from .orders import Reject, Request
from .worklist import Site, item, plan

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id {id},
    facility TEXT NOT NULL, control_id TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL, peer TEXT, type TEXT, codec TEXT,
    ack_code TEXT NOT NULL, reason TEXT, raw {blob} NOT NULL, ack {blob} NOT NULL,
    UNIQUE (facility, control_id)
);
CREATE TABLE IF NOT EXISTS orders (
    facility TEXT NOT NULL, accession TEXT NOT NULL,
    hospital TEXT NOT NULL, status TEXT NOT NULL,
    patient_id TEXT NOT NULL, urgent INTEGER NOT NULL DEFAULT 0,
    study_uid TEXT, created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL, control_id TEXT,
    PRIMARY KEY (facility, accession)
);
CREATE TABLE IF NOT EXISTS items (
    facility TEXT NOT NULL, accession TEXT NOT NULL, aet TEXT NOT NULL,
    status TEXT NOT NULL, patient_id TEXT NOT NULL, item TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (facility, accession, aet)
);
CREATE INDEX IF NOT EXISTS items_by_aet ON items (aet, status);
CREATE INDEX IF NOT EXISTS items_by_patient ON items (patient_id);
CREATE TABLE IF NOT EXISTS patient_updates (
    id {id}, at DOUBLE PRECISION NOT NULL, facility TEXT NOT NULL, issuer TEXT NOT NULL,
    kind TEXT NOT NULL, old_id TEXT NOT NULL, new_id TEXT NOT NULL,
    name TEXT, birth_date TEXT, sex TEXT, control_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mpps (
    sop_uid TEXT PRIMARY KEY, status TEXT NOT NULL, aet TEXT NOT NULL,
    accession TEXT, study_uid TEXT, facility TEXT, linked INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    id {id}, facility TEXT NOT NULL, accession TEXT NOT NULL, study_uid TEXT,
    status TEXT NOT NULL, pathology INTEGER NOT NULL DEFAULT 0, report TEXT NOT NULL, digest TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, sop_uid TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    next_try_at DOUBLE PRECISION NOT NULL DEFAULT 0, control_id TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL, attached_at DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    UNIQUE (facility, accession, digest)
);
CREATE INDEX IF NOT EXISTS results_due ON results (state, next_try_at);
CREATE TABLE IF NOT EXISTS notifications (
    id {id}, facility TEXT NOT NULL, kind TEXT NOT NULL, accession TEXT NOT NULL, study_uid TEXT,
    control_id TEXT NOT NULL UNIQUE, message {blob} NOT NULL, url TEXT, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_try_at DOUBLE PRECISION NOT NULL DEFAULT 0, last_error TEXT,
    ack_code TEXT, created_at DOUBLE PRECISION NOT NULL, sent_at DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, facility, id);
CREATE TABLE IF NOT EXISTS study_events (
    at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, study_id TEXT NOT NULL, study_uid TEXT, detail TEXT,
    received_at DOUBLE PRECISION NOT NULL,
    UNIQUE (kind, study_id, at)
);
CREATE INDEX IF NOT EXISTS study_events_uid ON study_events (study_uid);
CREATE TABLE IF NOT EXISTS audit (
    id {id}, at DOUBLE PRECISION NOT NULL, what TEXT NOT NULL, accession TEXT, details TEXT
);
"""
#: item states offered on the worklist
OFFERED = ("SCHEDULED",)


class Store:
    def __init__(self, spec: dict):
        """``spec``: the database (:func:`.db.open_db`)."""
        self.db = open_db(spec)
        self.db.schema(SCHEMA)
        #: set when a result is kept: the attacher tries it at once
        self.results_wake = threading.Event()
        #: notifications to the MIS ({"application", "viewer_url"}); None: none are made
        self.notify: dict | None = None
        #: set when a notification is queued: the sender tries at once
        self.notify_wake = threading.Event()

    def close(self) -> None:
        self.db.close()

    def _tx(self):
        return self.db.tx()

    # --- messages -----------------------------------------------------------------

    def seen(self, facility: str, control_id: str) -> bytes | None:
        """The ACK a message with this (MSH-4, MSH-10) got before, if any."""
        if not control_id:
            return None
        rows = self.db.query("SELECT ack FROM messages WHERE facility=? AND control_id=?", (facility, control_id))
        return bytes(rows[0][0]) if rows else None

    def refuse(self, *, facility: str, control_id: str, raw: bytes, ack: bytes, code: str, reason: str,
               peer: str, mtype: str = "", codec: str = "") -> None:
        """Keep a message that was not accepted, with its reason (nothing is lost).
        A message with no control ID is kept under a made-up one."""
        control_id = control_id or f"(none)-{time.time_ns()}"
        with self._tx() as c:
            c.execute("INSERT INTO messages(facility, control_id, received_at, peer, type, codec, "
                      "ack_code, reason, raw, ack) VALUES(?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                      (facility, control_id, time.time(), peer, mtype, codec, code, reason, raw, ack))

    def accept(self, req: Request, site: Site, *, raw: bytes, codec: str, peer: str,
               make_ack) -> bytes:
        """Apply a parsed message and store it with its ACK in one transaction;
        returns the ACK.  Raises :class:`Reject` (nothing applied) for an
        order that cannot be applied: the caller keeps it with :meth:`refuse`."""
        now = time.time()
        with self._tx() as c:
            applied = self._apply(c, req, site, now)
            code, error, text = applied if isinstance(applied, tuple) else ("AA", None, applied)
            ack = make_ack(text) if code == "AA" else make_ack(text, code, error)
            c.execute("INSERT INTO messages(facility, control_id, received_at, peer, type, codec, ack_code, "
                      "reason, raw, ack) VALUES(?,?,?,?,?,?,?,?,?,?)",
                      (req.facility, req.control_id, now, peer, req.type, codec, code, text, raw, ack))
        return ack

    # --- orders -> items --------------------------------------------------------------

    def _apply(self, c, req: Request, site: Site, now: float) -> str:
        if req.type in ("ADT^A08", "ADT^A40"):
            return self._adt(c, req, site, now)
        if req.result is not None:
            return self._result(c, req, site, now)
        hospital, work = plan(req, site)
        done = []
        for order, devices in work:
            key = (req.facility, order.accession)
            row = c.execute("SELECT * FROM orders WHERE facility=? AND accession=?", key).fetchone()
            if order.control == "new":
                if row is not None and row["status"] != "CANCELLED":
                    raise Reject("AE", 205, f"order {order.accession} exists already ({row['status']}); "
                                            "a change is ORC-1 XO", "ORC^1^1")
                if row is not None:         # a cancelled order ordered again: its old items go
                    c.execute("DELETE FROM items WHERE facility=? AND accession=?", key)
                study_uid = self._items(c, req, order, devices, now, hospital.issuer)
                c.execute("INSERT INTO orders(facility, accession, hospital, status, patient_id, urgent, "
                          "study_uid, created_at, updated_at, control_id) VALUES(?,?,?,?,?,?,?,?,?,?) "
                          "ON CONFLICT (facility, accession) DO UPDATE SET hospital=excluded.hospital, "
                          "status=excluded.status, patient_id=excluded.patient_id, urgent=excluded.urgent, "
                          "study_uid=excluded.study_uid, created_at=excluded.created_at, "
                          "updated_at=excluded.updated_at, control_id=excluded.control_id",
                          (*key, hospital.slug, "SCHEDULED", req.patient.id, int(order.urgent),
                           study_uid, now, now, req.control_id))
                done.append(f"{order.accession}: scheduled on {', '.join(d.aet for d in devices)}")
                continue
            if row is None:
                raise Reject("AE", 204, f"order {order.accession} is not known here: a {order.control} "
                                        f"(ORC-1) needs its new order (NW) first", "ORC^1^1")
            if order.control == "change":
                c.execute("DELETE FROM items WHERE facility=? AND accession=? AND status IN ('SCHEDULED','HOLD')",
                          key)
                study_uid = self._items(c, req, order, devices, now, hospital.issuer)
                c.execute("UPDATE orders SET status='SCHEDULED', patient_id=?, urgent=?, updated_at=?, "
                          "control_id=?, study_uid=COALESCE(study_uid, ?) WHERE facility=? AND accession=?",
                          (req.patient.id, int(order.urgent), now, req.control_id, study_uid, *key))
                done.append(f"{order.accession}: changed")
            else:
                status = {"cancel": "CANCELLED", "hold": "HOLD", "release": "SCHEDULED"}[order.control]
                c.execute("UPDATE orders SET status=?, updated_at=? WHERE facility=? AND accession=?",
                          (status, now, *key))
                c.execute("UPDATE items SET status=?, updated_at=? WHERE facility=? AND accession=? "
                          "AND status IN ('SCHEDULED','HOLD')", (status, now, *key))
                done.append(f"{order.accession}: {status.lower()}")
            c.execute("INSERT INTO audit(at, what, accession, details) VALUES(?,?,?,?)",
                      (now, f"order {order.control}", order.accession, req.control_id))
        return "; ".join(done)

    def _items(self, c, req: Request, order, devices, now: float, issuer: str = "") -> str | None:
        """The order's items, one per device, in one statement; returns its
        Study Instance UID (the same on every device: one study per order)."""
        its = [item(order, req.patient, d, req.facility, issuer) for d in devices]
        if not its:
            return None
        rows = [(req.facility, order.accession, d.aet, "SCHEDULED", req.patient.id,
                 json.dumps(it, ensure_ascii=False), now) for d, it in zip(devices, its)]
        c.execute("INSERT INTO items(facility, accession, aet, status, patient_id, item, updated_at) VALUES "
                  + ",".join(["(?,?,?,?,?,?,?)"] * len(rows))
                  + " ON CONFLICT (facility, accession, aet) DO UPDATE SET status=excluded.status, "
                  "patient_id=excluded.patient_id, item=excluded.item, updated_at=excluded.updated_at",
                  [v for r in rows for v in r])
        return its[0]["study_uid"]

    def _adt(self, c, req: Request, site: Site, now: float) -> str:
        """Demographics of pending items follow the MIS (A08); a merge (A40)
        moves the merged-away record's items to the surviving one.  Either is
        also kept in ``patient_updates`` for the studies already stored: the
        node's Orthanc plugin applies them (Orthanc's modify) and the
        replication's correction path carries them to the TsAMI's copy."""
        hospital = site.hospital(req.facility)
        p = req.patient
        old_id = req.merged_from.id if req.merged_from else p.id
        rows = c.execute("SELECT facility, accession, aet, item FROM items WHERE patient_id=? AND facility=? "
                         "AND status IN ('SCHEDULED','HOLD')", (old_id, req.facility)).fetchall()
        for r in rows:
            it = json.loads(r["item"])
            before = it["patient"]
            it["patient"] = {"id": p.id, "issuer": hospital.issuer or p.issuer or before.get("issuer", ""),
                             "name": p.name or before.get("name", ""),
                             "birth_date": p.birth_date or before.get("birth_date", ""),
                             "sex": p.sex or before.get("sex", "")}
            c.execute("UPDATE items SET item=?, patient_id=?, updated_at=? WHERE facility=? AND accession=? AND aet=?",
                      (json.dumps(it, ensure_ascii=False), p.id, now, r["facility"], r["accession"], r["aet"]))
        if req.merged_from:
            c.execute("UPDATE orders SET patient_id=?, updated_at=? WHERE patient_id=? AND facility=?",
                      (p.id, now, old_id, req.facility))
        what = "merged" if req.merged_from else "updated"
        c.execute("INSERT INTO patient_updates(at, facility, issuer, kind, old_id, new_id, name, birth_date, sex, "
                  "control_id) VALUES(?,?,?,?,?,?,?,?,?,?)",
                  (now, req.facility, hospital.issuer or (req.merged_from.issuer if req.merged_from else p.issuer),
                   "merge" if req.merged_from else "update", old_id, p.id, p.name, p.birth_date, p.sex,
                   req.control_id))
        c.execute("INSERT INTO audit(at, what, accession, details) VALUES(?,?,?,?)",
                  (now, f"patient {what}", None, json.dumps({"control_id": req.control_id, "items": len(rows)})))
        return f"patient {what}: {len(rows)} pending worklist item(s)"

    # --- results (ORU^R01) -------------------------------------------------------------

    def _result(self, c, req: Request, site: Site, now: float):
        """Keep a study's result to be attached to it (the attacher, ``attach``):
        ``AA`` when its study is known (by its order or its own Study Instance
        UID), else ``AE`` -- kept all the same, and attached when a study with
        that accession number arrives.  A result for a cancelled order is
        refused; the same result twice changes nothing; a corrected one
        supersedes the one before."""
        hospital = site.hospital(req.facility)
        r = req.result
        order = c.execute("SELECT status, study_uid FROM orders WHERE facility=? AND accession=?",
                          (req.facility, r.accession)).fetchone()
        if order is not None and order["status"] == "CANCELLED":
            raise Reject("AE", 204, f"result {r.accession}: its order was cancelled (ORC-1 CA); a result is not "
                                    "attached to a cancelled order", "OBR^1^3")
        report = results_mod.report_facts(r, req.patient, hospital)
        digest = results_mod.digest(report)
        if c.execute("SELECT 1 FROM results WHERE facility=? AND accession=? AND digest=?",
                     (req.facility, r.accession, digest)).fetchone():
            return f"result {r.accession}: the same result again; nothing changed"
        study_uid = r.study_uid or (order["study_uid"] if order is not None else "") or None
        pathology = results_mod.pathology(r, hospital.pathology_codes)
        superseded = 0
        if r.status == "corrected":
            superseded = c.execute("UPDATE results SET state='superseded', reason=?, updated_at=? WHERE "
                                   "facility=? AND accession=? AND state IN ('waiting','attached')",
                                   (f"superseded by the corrected result {req.control_id}", now, req.facility,
                                    r.accession)).rowcount
        c.execute("INSERT INTO results(facility, accession, study_uid, status, pathology, report, digest, state, "
                  "reason, control_id, received_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                  (req.facility, r.accession, study_uid, r.status, int(pathology),
                   json.dumps(report, ensure_ascii=False), digest, "waiting", "not attached yet", req.control_id,
                   now, now))
        c.execute("INSERT INTO audit(at, what, accession, details) VALUES(?,?,?,?)",
                  (now, f"result {r.status}", r.accession,
                   json.dumps({"control_id": req.control_id, "pathology": pathology, "superseded": superseded})))
        self.results_wake.set()
        what = (f"result {r.accession} ({r.status}{', pathology' if pathology else ''}) kept; "
                "it is attached to its study as a report")
        if superseded:
            what += f"; it replaces the result before ({superseded})"
        if order is None and not r.study_uid:
            return ("AE", 204, f"no order or study is known for accession {r.accession} (OBR-18, OBR-3): the "
                               "result is kept and attached when a study with that accession number arrives")
        return what

    def results_due(self, now: float, limit: int = 20) -> list[dict]:
        """Results waiting for their study whose next try is due, oldest first."""
        rows = self.db.query("SELECT * FROM results WHERE state='waiting' AND next_try_at<=? ORDER BY id LIMIT ?",
                             (now, limit))
        return [dict(r, report=json.loads(r["report"])) for r in rows]

    def result_attached(self, result_id: int, *, study_uid: str, sop_uid: str) -> None:
        now = time.time()
        with self._tx() as c:
            done = c.execute("UPDATE results SET state='attached', study_uid=?, sop_uid=?, reason=NULL, "
                             "attached_at=?, updated_at=? WHERE id=? AND state='waiting'",
                             (study_uid, sop_uid, now, now, result_id)).rowcount
            if done:
                r = c.execute("SELECT facility, accession, report FROM results WHERE id=?", (result_id,)).fetchone()
                report = json.loads(r["report"])
                self._notify(c, "report", r["facility"], r["accession"], study_uid=study_uid,
                             patient=report.get("patient") or {}, procedure="", report=report, now=now,
                             extra=str(result_id))
            c.execute("INSERT INTO audit(at, what, accession, details) SELECT ?, 'result attached', accession, "
                      "? FROM results WHERE id=?", (now, json.dumps({"sop_uid": sop_uid, "study_uid": study_uid}),
                                                   result_id))

    def result_waits(self, result_id: int, reason: str, retry_seconds: float) -> None:
        """Not attached this time (its study is not here yet, Orthanc did not take it): try again later."""
        with self._tx() as c:
            c.execute("UPDATE results SET reason=?, attempts=attempts+1, next_try_at=? WHERE id=?",
                      (reason, time.time() + retry_seconds, result_id))

    def result_predecessor(self, r: dict) -> dict | None:
        """The report an earlier result of the same order attached (a corrected result replaces it)."""
        rows = self.db.query("SELECT sop_uid, study_uid FROM results WHERE facility=? AND accession=? AND id<? "
                             "AND sop_uid IS NOT NULL ORDER BY id DESC LIMIT 1",
                             (r["facility"], r["accession"], r["id"]))
        if not rows:
            return None
        return {"sop_uid": rows[0]["sop_uid"], "series_uid": results_mod.series_uid(rows[0]["study_uid"])}

    def results(self) -> list[dict]:
        rows = self.db.query("SELECT id, facility, accession, study_uid, status, pathology, state, reason, sop_uid, "
                             "attempts, control_id FROM results ORDER BY id")
        return [dict(r) for r in rows]

    # --- notifications to the MIS -------------------------------------------------------

    def _notify_order(self, c, kind: str, facility: str, accession: str, *, now: float, extra: str = "") -> None:
        """A notification about an order, from what its worklist item knows."""
        r = c.execute("SELECT item FROM items WHERE facility=? AND accession=? ORDER BY aet LIMIT 1",
                      (facility, accession)).fetchone()
        it = json.loads(r["item"]) if r is not None else {}
        procedure = "^".join([it.get("procedure_code", ""), it.get("procedure_name", ""),
                              it.get("procedure_scheme", "")]).rstrip("^")
        self._notify(c, kind, facility, accession, study_uid=it.get("study_uid", ""),
                     patient=it.get("patient") or {}, procedure=procedure, now=now, extra=extra)

    def _notify(self, c, kind: str, facility: str, accession: str, *, study_uid: str, patient: dict,
                procedure: str, now: float, report: dict | None = None, extra: str = "") -> None:
        """Queue one notification, in the caller's transaction: it goes once what it tells is committed."""
        if self.notify is None:
            return
        control = notify.control_id(kind, facility, accession, extra)
        url = notify.viewer_url(self.notify.get("viewer_url", ""), patient.get("id", ""), accession, study_uid)
        text = notify.message(kind, control=control, facility=facility,
                              application=self.notify.get("application", "KONTUR"), accession=accession,
                              patient=patient, study_uid=study_uid, url=url, procedure=procedure, report=report,
                              now=dt.datetime.fromtimestamp(now, dt.timezone.utc))
        c.execute("INSERT INTO notifications(facility, kind, accession, study_uid, control_id, message, url, state, "
                  "created_at) VALUES(?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                  (facility, kind, accession, study_uid, control, text.encode("utf-8"), url, "pending", now))
        self.notify_wake.set()

    #: what the node's Orthanc plugin reports of a study (its outbox's events)
    STUDY_EVENTS = ("archived", "validated", "incomplete", "quarantined", "delivered")

    def study_event(self, kind: str, *, study_id: str, study_uid: str | None, at: float,
                    detail: str | None = None) -> str:
        """One step of a study on this node, as its Orthanc plugin saw it: kept
        (for the study's status) and, for an ordered study archived here or
        delivered to the TsAMI, told to the MIS (once per order)."""
        if kind not in self.STUDY_EVENTS:
            raise ValueError(f"event {kind!r}: expected one of {', '.join(self.STUDY_EVENTS)}")
        with self._tx() as c:
            new = c.execute("INSERT INTO study_events(at, kind, study_id, study_uid, detail, received_at) "
                            "VALUES(?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                            (at, kind, study_id, study_uid, detail, time.time())).rowcount
            if not new or kind not in ("archived", "delivered") or not study_uid:
                return "kept"
            order = c.execute("SELECT facility, accession FROM orders WHERE study_uid=? AND status<>'CANCELLED'",
                              (study_uid,)).fetchone()
            if order is None:
                return "kept (no order of the MIS for it)"
            self._notify_order(c, kind, order["facility"], order["accession"], now=at)
            return f"kept; the MIS of {order['facility']} is told (order {order['accession']})"

    def notifications_due(self, now: float) -> dict[str, list[dict]]:
        """Per facility, its pending notifications in order -- or none while its
        oldest is not due (they go in order: a later one never overtakes)."""
        rows = self.db.query("SELECT id, facility, kind, accession, control_id, message, attempts, next_try_at "
                             "FROM notifications WHERE state='pending' ORDER BY id")
        out: dict[str, list[dict]] = {}
        blocked: set[str] = set()
        for r in rows:
            f = r["facility"]
            if f in blocked:
                continue
            if r["next_try_at"] > now and f not in out:
                blocked.add(f)
                continue
            out.setdefault(f, []).append(dict(r, message=bytes(r["message"])))
        return out

    def notification_done(self, nid: int, *, ack_code: str, state: str = "sent", error: str | None = None) -> None:
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE notifications SET state=?, ack_code=?, sent_at=?, last_error=?, attempts=attempts+1 "
                      "WHERE id=?", (state, ack_code, now, error, nid))

    def notification_retry(self, nid: int, error: str, delay: float) -> None:
        with self._tx() as c:
            c.execute("UPDATE notifications SET attempts=attempts+1, last_error=?, next_try_at=? WHERE id=?",
                      (error, time.time() + delay, nid))

    def notifications(self) -> list[dict]:
        rows = self.db.query("SELECT id, facility, kind, accession, study_uid, control_id, url, state, attempts, "
                             "last_error, ack_code FROM notifications ORDER BY id")
        return [dict(r) for r in rows]

    # --- MPPS ------------------------------------------------------------------------

    def mpps_get(self, sop_uid: str) -> mpps.Step | None:
        rows = self.db.query("SELECT * FROM mpps WHERE sop_uid=?", (sop_uid,))
        r = rows[0] if rows else None
        return None if r is None else mpps.Step(r["sop_uid"], r["status"], r["aet"], r["accession"] or "",
                                                r["study_uid"] or "")

    def _order_of(self, c, step: mpps.Step) -> tuple[str, str] | None:
        """(facility, accession) of the order an MPPS performs, by the item on its device."""
        for col, value in (("accession", step.accession), ("study_uid", step.study_uid)):
            if not value:
                continue
            if col == "accession":
                r = c.execute("SELECT facility, accession FROM items WHERE accession=? AND aet=?",
                              (value, step.aet)).fetchone()
            else:
                r = c.execute("SELECT facility, accession FROM orders WHERE study_uid=?", (value,)).fetchone()
            if r is not None:
                return r["facility"], r["accession"]
        return None

    def mpps_create(self, step: mpps.Step) -> str:
        """Record an IN PROGRESS step; returns what it did to the worklist."""
        now = time.time()
        with self._tx() as c:
            if c.execute("SELECT 1 FROM mpps WHERE sop_uid=?", (step.sop_uid,)).fetchone():
                raise mpps.MppsError(mpps.DUPLICATE_INSTANCE, f"MPPS {step.sop_uid} exists already")
            order = self._order_of(c, step)
            c.execute("INSERT INTO mpps(sop_uid, status, aet, accession, study_uid, facility, linked, created_at, "
                      "updated_at) VALUES(?,?,?,?,?,?,?,?,?)",
                      (step.sop_uid, step.status, step.aet, order[1] if order else step.accession,
                       step.study_uid, order[0] if order else None, int(order is not None), now, now))
            if order is None:
                what = "no order known for it (an unscheduled procedure): kept, not linked"
            else:
                c.execute("UPDATE items SET status=CASE WHEN aet=? THEN 'IN PROGRESS' ELSE 'TAKEN' END, updated_at=? "
                          "WHERE facility=? AND accession=? AND status IN ('SCHEDULED','HOLD')",
                          (step.aet, now, *order))
                c.execute("UPDATE orders SET status='IN PROGRESS', updated_at=? WHERE facility=? AND accession=?",
                          (now, *order))
                what = f"order {order[1]} in progress on {step.aet}"
                self._notify_order(c, "started", *order, now=now, extra=step.sop_uid)
            c.execute("INSERT INTO audit(at, what, accession, details) VALUES(?,?,?,?)",
                      (now, "mpps in progress", order[1] if order else None, step.sop_uid))
        return what

    def mpps_update(self, step: mpps.Step) -> str:
        now = time.time()
        with self._tx() as c:
            c.execute("UPDATE mpps SET status=?, updated_at=? WHERE sop_uid=?", (step.status, now, step.sop_uid))
            r = c.execute("SELECT facility, accession, linked FROM mpps WHERE sop_uid=?", (step.sop_uid,)).fetchone()
            what = f"MPPS {step.status.lower()}"
            if r is not None and r["linked"] and step.status in mpps.FINAL:
                order = (r["facility"], r["accession"])
                if step.status == "COMPLETED":
                    c.execute("UPDATE items SET status='COMPLETED', updated_at=? WHERE facility=? AND accession=? "
                              "AND status IN ('IN PROGRESS','TAKEN','SCHEDULED','HOLD')", (now, *order))
                    c.execute("UPDATE orders SET status='COMPLETED', updated_at=? WHERE facility=? AND accession=?",
                              (now, *order))
                    what = f"order {order[1]} completed: off the worklist"
                else:
                    c.execute("UPDATE items SET status='SCHEDULED', updated_at=? WHERE facility=? AND accession=? "
                              "AND status IN ('IN PROGRESS','TAKEN')", (now, *order))
                    c.execute("UPDATE orders SET status='SCHEDULED', updated_at=? WHERE facility=? AND accession=?",
                              (now, *order))
                    what = f"order {order[1]} discontinued: offered again"
            c.execute("INSERT INTO audit(at, what, accession, details) VALUES(?,?,?,?)",
                      (now, f"mpps {step.status.lower()}", r["accession"] if r else None, step.sop_uid))
        return what

    # --- reading ----------------------------------------------------------------------

    def items(self, aet: str | None = None, *, offered_only: bool = True) -> list[dict]:
        q, args = "SELECT status, item FROM items", []
        where = []
        if aet is not None:
            where.append("aet=?")
            args.append(aet)
        if offered_only:
            where.append("status IN (%s)" % ",".join("?" * len(OFFERED)))
            args.extend(OFFERED)
        if where:
            q += " WHERE " + " AND ".join(where)
        rows = self.db.query(q + " ORDER BY updated_at", args)
        return [dict(json.loads(r["item"]), status=r["status"]) for r in rows]

    def messages(self) -> list[dict]:
        rows = self.db.query("SELECT id, facility, control_id, type, codec, ack_code, reason, received_at "
                             "FROM messages ORDER BY id")
        return [dict(r) for r in rows]

    def counts(self) -> dict:
        acks = {r[0]: r[1] for r in self.db.query("SELECT ack_code, count(*) FROM messages GROUP BY ack_code")}
        items = {r[0]: r[1] for r in self.db.query("SELECT status, count(*) FROM items GROUP BY status")}
        return {"messages": acks, "items": items}
