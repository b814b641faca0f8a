# SPDX-License-Identifier: AGPL-3.0-or-later
"""The MIS's demographic updates (ADT^A08) and merges (ADT^A40) applied to
the studies this node already stores (issue 11).

The HL7 service records each accepted ADT in its ``patient_updates`` table;
this node's plugin reads them in order (read-only; its own position is kept
in the outbox) and applies each with Orthanc's modify, ``KeepSource: false``:
a merge at patient level (``Force``: a PatientID changes only there), an
update of the name, birth date or sex study by study (Orthanc 1.10 modifies a
patient only together with its PatientID).  The
modified studies carry ``ModifiedFrom``, so the replication's correction
path supersedes the TsAMI's copy once the new one is verified there.

Pure but for :func:`pending`: which Patient ID the stored studies carry
(``ISSUER:ID`` under the regional key, the issue-10 ingest stage) and the
modify request.
"""
from __future__ import annotations

from pathlib import Path

from . import state


def pending(db_path: str | Path, after: int, limit: int = 50) -> list[dict]:
    """Updates after position ``after``, oldest first ([] while there is no table yet)."""
    return [dict(r) for r in state.read(db_path, "SELECT * FROM patient_updates WHERE id>? ORDER BY id LIMIT ?",
                                        (after, limit))]


def stored_id(patient_id: str, issuer: str, regional: bool) -> str:
    """The Patient ID the stored studies carry for the MIS's ``patient_id``."""
    return f"{issuer}:{patient_id}" if regional and issuer else patient_id


def level(update: dict) -> str:
    """Where Orthanc 1.10 can apply it: ``patients`` (a new PatientID) or ``studies``."""
    return "patients" if update["kind"] == "merge" and update["new_id"] != update["old_id"] else "studies"


def modify_request(update: dict, regional: bool) -> dict:
    """Orthanc's ``/{level}/{id}/modify`` body for one update (see :func:`level`)."""
    replace: dict = {}
    if update.get("name"):
        replace["PatientName"] = update["name"]
    if update.get("birth_date"):
        replace["PatientBirthDate"] = update["birth_date"]
    if update.get("sex"):
        replace["PatientSex"] = update["sex"]
    issuer = update.get("issuer") or ""
    if level(update) == "patients":
        replace["PatientID"] = stored_id(update["new_id"], issuer, regional)
        if issuer:
            replace["IssuerOfPatientID"] = issuer
        if regional:
            replace["OtherPatientIDsSequence"] = [{"PatientID": update["new_id"], "IssuerOfPatientID": issuer,
                                                   "TypeOfPatientID": "TEXT"}]
    body = {"Replace": replace, "KeepSource": False}
    if level(update) == "patients":
        body["Force"] = True
    return body


def describe(update: dict) -> str:
    """A log line's words (no patient data: the DeidentifyLogs baseline)."""
    what = "merge" if update["kind"] == "merge" else "demographics update"
    return f"ADT {what} #{update['id']} (message {update['control_id']})"
