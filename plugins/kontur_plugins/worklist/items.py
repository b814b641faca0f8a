# SPDX-License-Identifier: AGPL-3.0-or-later
"""Worklist items for a C-FIND (issue 11): read from the HL7 service's
state, made into the DICOM datasets Orthanc matches against the query.

Why Orthanc answers the worklist, not a second DICOM server: the devices
already know this node's AE title, address and port (they send their
studies there), Orthanc checks the calling AE against the inventory's
modalities as it does for C-STORE, and its worklist callback does the
matching of the query's keys (``WorklistIsMatch``).  The HL7 service writes
the items; this module only reads them (sqlite3, read-only, per query: a new
order is on the worklist as soon as its ACK went out).

The contract with ``services/kontur_hl7/store.py``: table ``items`` with
``aet``, ``status`` (``SCHEDULED`` is offered) and ``item`` (JSON: the keys
:func:`dataset` reads).  Pure but for the read.
"""
from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

from ..replication.reconcile import orthanc_study_id
from . import state

OFFERED = ("SCHEDULED",)
#: an item scheduled this many days ago and never performed is no longer offered
EXPIRE_DAYS = 7


def scheduled(db_path: str | Path, aet: str) -> list[dict]:
    """The items scheduled on the device ``aet`` ([] while the service has no state yet)."""
    rows = state.read(db_path, "SELECT item FROM items WHERE aet=? AND status IN (%s) ORDER BY updated_at"
                      % ",".join("?" * len(OFFERED)), (aet, *OFFERED))
    return [json.loads(r[0]) for r in rows]


def offered(items: list[dict], today: dt.date, expire_days: int = EXPIRE_DAYS) -> list[dict]:
    """Items still on the worklist: not scheduled before ``expire_days`` ago
    (an order never performed, e.g. the patient did not come)."""
    cutoff = (today - dt.timedelta(days=expire_days)).strftime("%Y%m%d")
    return [i for i in items if not i.get("scheduled") or i["scheduled"][:8] >= cutoff]


def study_ids(item: dict) -> list[str]:
    """Orthanc IDs the item's study has once stored here (with the hospital's own
    Patient ID, or under the regional key ``ISSUER:ID`` of the ingest stage):
    an item whose study is stored is done and leaves the worklist."""
    p = item.get("patient") or {}
    uid = item.get("study_uid")
    if not uid or not p.get("id"):
        return []
    keys = [p["id"]] + ([f"{p['issuer']}:{p['id']}"] if p.get("issuer") else [])
    return [orthanc_study_id(k, uid) for k in keys]


def urgent_order(db_path: str | Path, study_uid: str) -> str | None:
    """Why the study of ``study_uid`` is urgent -- a STAT or ASAP order of the
    MIS it was made for (the worklist's Study Instance UID) -- or None."""
    if not study_uid:
        return None
    rows = state.read(db_path, "SELECT accession FROM orders WHERE study_uid=? AND urgent=1", (study_uid,))
    return f"an urgent order of the MIS (accession {rows[0][0]})" if rows else None


def _split(ts: str) -> tuple[str, str]:
    ts = (ts or "").ljust(14, "0") if ts else ""
    return (ts[:8], ts[8:14]) if ts else ("", "")


def dataset(item: dict) -> bytes:
    """The worklist item as a DICOM file (UTF-8 text, ISO_IR 192)."""
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415 - Debian's python3-pydicom
    from pydicom.uid import ExplicitVRLittleEndian  # noqa: PLC0415

    p = item.get("patient") or {}
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = p.get("name", "")
    ds.PatientID = p.get("id", "")
    if p.get("issuer"):
        ds.IssuerOfPatientID = p["issuer"]
    ds.PatientBirthDate = p.get("birth_date", "")
    ds.PatientSex = p.get("sex", "")
    ds.AccessionNumber = item.get("accession", "")
    ds.StudyInstanceUID = item.get("study_uid", "")
    ds.RequestedProcedureID = item.get("requested_procedure_id", "")
    ds.RequestedProcedureDescription = item.get("procedure_name", "")
    ds.RequestedProcedurePriority = item.get("priority", "ROUTINE")
    ds.ReferringPhysicianName = ""
    if item.get("procedure_code"):
        code = Dataset()
        code.CodeValue = item["procedure_code"]
        code.CodingSchemeDesignator = item.get("procedure_scheme") or "RU-804N"
        code.CodeMeaning = item.get("procedure_name", "")
        ds.RequestedProcedureCodeSequence = [code]
    sps = Dataset()
    sps.Modality = item.get("modality", "")
    sps.ScheduledStationAETitle = item.get("aet", "")
    sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime = _split(item.get("scheduled", ""))
    sps.ScheduledProcedureStepID = item.get("sps_id", "")
    sps.ScheduledProcedureStepDescription = item.get("procedure_name", "")
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepStatus = "SCHEDULED"
    ds.ScheduledProcedureStepSequence = [sps]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.31"       # Modality Worklist Information Model - FIND
    meta.MediaStorageSOPInstanceUID = item.get("study_uid") or "2.25.0"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    try:
        ds.save_as(out, enforce_file_format=True)           # pydicom 3
    except TypeError:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(out, write_like_original=False)          # pydicom 2.3 (Debian 12)
    return out.getvalue()


def completed_studies(db, study_uids: list[str]) -> set[str]:
    """Which of ``study_uids`` their device reported COMPLETED (MPPS): the
    step's own Study Instance UID, or the order it performed."""
    done: set[str] = set()
    uids = sorted(set(u for u in study_uids if u))
    for i in range(0, len(uids), 400):
        part = uids[i:i + 400]
        marks = ",".join("?" * len(part))
        rows = state.read(db, f"SELECT study_uid FROM mpps WHERE status='COMPLETED' AND study_uid IN ({marks}) "
                              f"UNION SELECT study_uid FROM orders WHERE status='COMPLETED' AND study_uid IN ({marks})",
                          (*part, *part))
        done |= {r[0] for r in rows}
    return done


def pathology_results(db, since: float, limit: int = 200) -> list[dict]:
    """Results the HL7 service kept that mark pathology (OBX-8, the inventory's
    codes) and know their study, changed after ``since`` (the service's
    clock), oldest first: under the ``pathology`` policy their studies go."""
    rows = state.read(db, "SELECT study_uid, accession, control_id, updated_at FROM results WHERE pathology=1 "
                          "AND study_uid IS NOT NULL AND state<>'superseded' AND updated_at>? "
                          "ORDER BY updated_at LIMIT ?", (since, limit))
    return [dict(r) for r in rows]
