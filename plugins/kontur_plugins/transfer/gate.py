# SPDX-License-Identifier: AGPL-3.0-or-later
"""The transfer package's gate (issue 10): validation inside the one pipeline
(gate -> policy -> outbox), before a study may leave the node.

Every admission of a study (stable, late instance, operator push, flag, full
pass, correction) evaluates it afresh, so a fix -- Orthanc's modify or a
corrected re-send from the device -- is re-validated by the event it causes.
The latest result is kept per study in the node's state database (table
``validation``), with releases: ``kontur quarantine release`` is the audited
manual override (who, when, why) and lets that study go from then on.

``incomplete`` (only the report missing) never holds a study; ``quarantined``
holds it under ``enforce`` and is recorded, not held, under ``warn``.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..pipeline import StudyRef
from .rules import Series, Settings, StudyFacts, Validation, blocks, evaluate
from .rules import _text as text_of


IDENTITY_MARK = " at the TsAMI "


class NotHeld(LookupError):
    """A release names a study this node does not hold in quarantine."""


def study_facts(local: Any, study_id: str) -> StudyFacts | None:
    """The first instance of every series of a study, from this Orthanc."""
    series = local._get_or_none(f"/studies/{study_id}/series")
    if series is None:
        return None
    out = []
    for s in sorted(series, key=lambda s: s.get("ID", "")):
        instances = s.get("Instances") or []
        if not instances:
            continue
        first = sorted(instances)[0]
        tags = local._get_or_none(f"/instances/{first}/simplified-tags")
        if tags is None:
            continue
        out.append(Series(tags, local.metadata("instances", first, "TransferSyntax")))
    return StudyFacts(out)


class ValidationStore:
    """The ``validation`` table of the node's state database (the outbox's)."""

    def __init__(self, outbox: Any):
        self.outbox = outbox

    def record(self, ref: StudyRef, v: Validation, mode: str, now: float) -> None:
        with self.outbox.transaction() as c:
            c.execute(
                "INSERT INTO validation(study_id, study_uid, patient_id, state, reasons, notes, mode, checked_at) "
                "VALUES(?,?,?,?,?,?,?,?) ON CONFLICT(study_id) DO UPDATE SET study_uid=excluded.study_uid, "
                "patient_id=excluded.patient_id, state=excluded.state, reasons=excluded.reasons, "
                "notes=excluded.notes, mode=excluded.mode, checked_at=excluded.checked_at",
                (ref.study_id, ref.study_uid, ref.patient_id, v.state, json.dumps(list(v.reasons), ensure_ascii=False),
                 json.dumps(list(v.notes), ensure_ascii=False), mode, now))
            self.outbox.event(c, now, {"valid": "validated"}.get(v.state, v.state), ref.study_id, ref.study_uid,
                              "; ".join(v.reasons)[:500] or None)

    def get(self, study_id: str) -> dict | None:
        rows = self.outbox.query("SELECT * FROM validation WHERE study_id=?", (study_id,))
        return _row(rows[0]) if rows else None

    def listing(self, state: str | None = None, limit: int = 1000) -> list[dict]:
        if state:
            rows = self.outbox.query("SELECT * FROM validation WHERE state=? ORDER BY checked_at LIMIT ?",
                                     (state, limit))
        else:
            rows = self.outbox.query("SELECT * FROM validation ORDER BY checked_at LIMIT ?", (limit,))
        return [_row(r) for r in rows]

    def release(self, study_id: str, actor: str | None, reason: str, now: float) -> dict:
        with self.outbox.transaction() as c:
            row = c.execute("SELECT * FROM validation WHERE study_id=?", (study_id,)).fetchone()
            if row is None or row["state"] != "quarantined":
                raise NotHeld(f"study {study_id} is not quarantined on this node"
                              + (f" (it is {row['state']})" if row is not None else ""))
            if row["released_at"] is not None:
                raise NotHeld(f"study {study_id} was released already, by {row['released_by'] or '?'}: "
                              f"{row['release_reason']}")
            c.execute("UPDATE validation SET released_at=?, released_by=?, release_reason=? WHERE study_id=?",
                      (now, actor, reason, study_id))
            self.outbox.audit_entry(c, now, actor, "quarantine released", study_id, reason,
                                    {"reasons": json.loads(row["reasons"])})
        return self.get(study_id) or {}

    def summary(self) -> dict:
        counts = {s: 0 for s in ("valid", "incomplete", "quarantined")}
        released = 0
        reasons: dict[str, int] = {}
        for r in self.outbox.query("SELECT state, reasons, released_at FROM validation"):
            counts[r["state"]] = counts.get(r["state"], 0) + 1
            if r["released_at"] is not None:
                released += 1
            for reason in json.loads(r["reasons"]):
                key = _reason_kind(reason)
                reasons[key] = reasons.get(key, 0) + 1
        top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        return {**counts, "released": released, "top_reasons": [{"reason": k, "studies": n} for k, n in top]}


def _reason_kind(reason: str) -> str:
    """A reason without the study's own values (so they can be counted)."""
    if reason.startswith("Patient ID ") and " at the TsAMI " in reason:
        return "Patient ID taken at the TsAMI by " + reason.split(" at the TsAMI ")[1].split(" (")[0]
    for cut in (" is '", " is \"", " code '", " {", " ("):
        if cut in reason:
            return reason.split(cut)[0]
    return reason


def _row(r: dict) -> dict:
    d = dict(r)
    d["reasons"] = json.loads(d["reasons"])
    d["notes"] = json.loads(d["notes"])
    d["released"] = d["released_at"] is not None
    return d


class TransferGate:
    name = "transfer"

    def __init__(self, settings: Settings, facts_of: Callable[[str], StudyFacts | None], store: ValidationStore,
                 clock: Callable[[], float]):
        self.settings = settings
        self.facts_of = facts_of
        self.store = store
        self.clock = clock

    def status(self) -> dict:
        return {"mode": self.settings.mode, "classifier_version": self.settings.classifier_version,
                **self.store.summary()}

    def presend(self, row: dict, upstream: Any) -> str | None:
        """Before a study's first instance goes: does its PatientID belong to
        another person at the upstream?  A conflict holds it under every mode
        (a merge at the TsAMI is not a finding to note, it is the harm); a
        release lets it go.  The upstream's errors propagate (the send is
        retried, as any transfer error)."""
        sid = row["study_id"]
        rec = self.store.get(sid)
        if rec and rec["released"]:
            return None
        facts = self.facts_of(sid)
        if facts is None or not facts.series:
            return None
        tags = facts.first
        pid = str(tags.get("PatientID") or "").strip()
        if not pid:
            return None
        person = {"id": pid, "issuer": text_of(tags.get("IssuerOfPatientID")) or None,
                  "name": text_of(tags.get("PatientName")) or None,
                  "birth_date": text_of(tags.get("PatientBirthDate")) or None}
        answer = upstream.patients([person]) if hasattr(upstream, "patients") else None
        why = ((answer or {}).get(pid) or {}).get("conflict")
        if not why:
            return None
        v = evaluate(facts, self.settings)
        ref = StudyRef(sid, row.get("study_uid"), row.get("patient_id"))
        self.store.record(ref, Validation("quarantined", v.reasons + (why,), v.notes), self.settings.mode, self.clock())
        return "quarantined: " + why

    def check(self, study: StudyRef) -> str | None:
        facts = self.facts_of(study.study_id)
        if facts is None:
            return None                     # gone meanwhile: the replicator sees that itself
        v = evaluate(facts, self.settings)
        prior = self.store.get(study.study_id)
        # a Patient ID taken at the TsAMI by another person stays a reason until released
        # (it was found before sending; the study's own tags cannot show it)
        identity = tuple(r for r in (prior or {}).get("reasons", []) if IDENTITY_MARK in r)
        if identity:
            v = Validation("quarantined", v.reasons + identity, v.notes)
        self.store.record(study, v, self.settings.mode, self.clock())
        if not identity and not blocks(v, self.settings):
            return None
        if prior and prior["released"]:
            return None
        return "quarantined: " + "; ".join(v.reasons)
