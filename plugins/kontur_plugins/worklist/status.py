# SPDX-License-Identifier: AGPL-3.0-or-later
"""A study's way across the region, with times (issue 12, "status online"):
ordered -> on the worklist -> started (MPPS) -> archived in the LAMI ->
validated / quarantined -> report attached -> delivered to the TsAMI -> the
MIS notified.  What the HL7 service knows (its state, read-only) and what
this node's outbox saw (its events), for an accession number or a Study
Instance UID.  Pure but for :func:`gather`'s reads.
"""
from __future__ import annotations

import datetime as dt
import json
import re

from . import state

#: the steps in the reglament's order, and how they read
STEPS = (
    ("ordered", "ordered by the MIS"),
    ("worklist", "on the worklist"),
    ("started", "started on the device (MPPS)"),
    ("completed", "completed on the device (MPPS)"),
    ("archived", "archived in the LAMI"),
    ("validated", "validated"),
    ("quarantined", "quarantined"),
    ("report", "report attached"),
    ("delivered", "delivered to the TsAMI"),
    ("notified", "the MIS notified"),
)
_UID = re.compile(r"^(0|[1-9]\d*)(\.(0|[1-9]\d*))+$")


def is_uid(value: str) -> bool:
    return bool(_UID.match(value or "")) and "." in value


def _iso(t) -> str | None:
    return dt.datetime.fromtimestamp(float(t), dt.timezone.utc).isoformat(timespec="seconds") if t else None


def gather(db, outbox_query, value: str) -> dict | None:
    """Everything known of the study ``value`` names (None: nothing)."""
    hl7 = bool(db)
    orders = []
    if hl7:
        col = "study_uid" if is_uid(value) else "accession"
        orders = [dict(r) for r in state.read(db, f"SELECT * FROM orders WHERE {col}=?", (value,))]
    order = orders[0] if orders else None
    study_uid = value if is_uid(value) else (order or {}).get("study_uid")
    accession = (order or {}).get("accession") or ("" if is_uid(value) else value)
    facts = {"order": order, "items": [], "mpps": [], "results": [], "notifications": [],
             "events": outbox_query("SELECT * FROM events WHERE study_uid=? ORDER BY id", (study_uid,))
             if study_uid else []}
    if hl7 and order is not None:
        key = (order["facility"], order["accession"])
        facts["items"] = [dict(r) for r in state.read(
            db, "SELECT aet, status, item, updated_at FROM items WHERE facility=? AND accession=? ORDER BY aet", key)]
        facts["mpps"] = [dict(r) for r in state.read(
            db, "SELECT status, aet, created_at, updated_at FROM mpps WHERE facility=? AND accession=? "
                "ORDER BY created_at", key)]
        facts["notifications"] = [dict(r) for r in state.read(
            db, "SELECT kind, state, created_at, sent_at, url, ack_code FROM notifications WHERE facility=? AND "
                "accession=? ORDER BY id", key)]
    if hl7 and (accession or study_uid):
        facts["results"] = [dict(r) for r in state.read(
            db, "SELECT status, state, pathology, received_at, attached_at, control_id FROM results "
                "WHERE accession=? OR study_uid=? ORDER BY id", (accession, study_uid or ""))]
    if order is None and not facts["events"] and not facts["results"]:
        return None
    facts.update(accession=accession, study_uid=study_uid)
    return facts


def timeline(facts: dict, expect_validation: bool = True) -> dict:
    """The study's steps with their times (the first time each happened) and what is still to come."""
    at: dict[str, tuple[float, str]] = {}

    def mark(step: str, t, detail: str = "") -> None:
        if t and (step not in at or float(t) < at[step][0]):
            at[step] = (float(t), detail)

    order = facts.get("order")
    patient_id, url = "", ""
    if order:
        mark("ordered", order["created_at"], f"{order['facility']}, accession {order['accession']}"
                                             f"{', urgent' if order.get('urgent') else ''}")
        patient_id = order.get("patient_id", "")
    if facts.get("items"):
        mark("worklist", min(i["updated_at"] for i in facts["items"]) if not order else order["created_at"],
             ", ".join(i["aet"] for i in facts["items"]))
    for m in facts.get("mpps", []):
        mark("started", m["created_at"], m["aet"])
        if m["status"] == "COMPLETED":
            mark("completed", m["updated_at"], m["aet"])
    for e in facts.get("events", []):
        kind = {"incomplete": "validated"}.get(e["kind"], e["kind"])
        detail = e.get("detail") or ""
        if e["kind"] == "incomplete":
            detail = f"incomplete: {detail}" if detail else "incomplete"
        mark(kind, e["at"], detail)
    for r in facts.get("results", []):
        if r.get("attached_at"):
            mark("report", r["attached_at"], f"{r['status']}{', pathology' if r.get('pathology') else ''}")
    sent = [n for n in facts.get("notifications", []) if n.get("state") == "sent"]
    for n in facts.get("notifications", []):
        url = url or n.get("url") or ""
    if sent:
        last = max(sent, key=lambda n: n["sent_at"] or 0)
        mark("notified", last["sent_at"], ", ".join(n["kind"] for n in sent))
    steps = [{"step": name, "what": words, "at": _iso(at[name][0]), "detail": at[name][1]}
             for name, words in STEPS if name in at]
    steps.sort(key=lambda s: s["at"] or "")
    expected = [name for name, _ in STEPS if name != "quarantined"]
    if "quarantined" in at or not expect_validation:
        expected.remove("validated")
    if not facts.get("mpps") and "archived" in at:      # a device without MPPS
        expected = [n for n in expected if n not in ("started", "completed")]
    todo = [name for name in expected if name not in at]
    return {"accession": facts.get("accession") or None, "study_uid": facts.get("study_uid"),
            "patient_id": patient_id or None, "viewer_url": url or None, "steps": steps, "to_come": todo}


def answer(db, outbox_query, value: str, expect_validation: bool = True) -> tuple[int, dict]:
    """(HTTP status, body) of ``GET /kontur/study/VALUE``."""
    value = (value or "").strip()
    if not value or len(value) > 64 or not re.fullmatch(r"[A-Za-z0-9._\-]+", value):
        return 400, {"error": f"{value[:80]!r} is not an accession number or a Study Instance UID "
                              "(letters, digits, '.', '-', '_'; at most 64)"}
    facts = gather(db, outbox_query, value)
    if facts is None:
        return 404, {"error": f"no study or order {value} is known on this node"}
    return 200, timeline(facts, expect_validation)


def dumps(body: dict) -> bytes:
    return json.dumps(body, ensure_ascii=False, sort_keys=True).encode("utf-8")
