# SPDX-License-Identifier: AGPL-3.0-or-later
"""Patient identity across the region (issue 10, point 5): is the TsAMI's
patient with this Patient ID the same person?

Orthanc keys a patient by PatientID alone, and the region's replication
compares the two archives' Orthanc IDs and files byte for byte, so kontur does
not rewrite PatientID on the way.  Instead, before a study's first instance
goes, the sender asks the upstream who holds that PatientID there (its
receiver route ``/kontur/patients``), and this rule decides; a conflict holds
the study, quarantined with the reason, at the hospital -- never merged
silently at the TsAMI.

Pure.  A :class:`Person` is what both sides know: Issuer of Patient ID, name
and birth date.
"""
from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from typing import Any

from ..replication.receiver import KONTUR, MAX_BATCH, ReceiverError


@dataclass(frozen=True)
class Person:
    issuer: str | None
    name: str | None
    birth_date: str | None


def orthanc_patient_id(patient_id: str) -> str:
    """Orthanc's patient ID: SHA-1 of the PatientID in five groups of eight hex digits."""
    h = hashlib.sha1(patient_id.encode("utf-8")).hexdigest()
    return "-".join(h[i:i + 8] for i in range(0, 40, 8))


def _norm_name(name: str | None) -> str:
    if not name:
        return ""
    text = unicodedata.normalize("NFC", name).replace("ё", "е").replace("Ё", "Е")
    return " ".join(part for part in text.replace("^", " ").replace("=", " ").upper().split())


def conflict(patient_id: str, mine: Person, theirs: Person) -> str | None:
    """Why the upstream's patient ``patient_id`` is not the person of this
    study (None: the same person, or nothing to tell them apart by)."""
    if mine.issuer and theirs.issuer and mine.issuer != theirs.issuer:
        return (f"Patient ID {patient_id} at the TsAMI is a patient of another hospital (issuer {theirs.issuer}, "
                f"here {mine.issuer}): the TsAMI keys patients by Patient ID alone and would merge them")
    same_name = _norm_name(mine.name) == _norm_name(theirs.name)
    same_birth = (mine.birth_date or "") == (theirs.birth_date or "")
    if not same_name and not same_birth and (mine.name or mine.birth_date) and (theirs.name or theirs.birth_date):
        return (f"Patient ID {patient_id} at the TsAMI belongs to a person with another name and birth date "
                f"(issuer {theirs.issuer or mine.issuer or 'not stated'}): the TsAMI would merge them")
    return None


def answer(local: Any, data: Any) -> dict:
    """The upstream's side, ``POST /kontur/patients``: is the patient with this
    PatientID here the same person?  The caller sends its own person (issuer,
    name, birth date); the answer says only held or not, and the conflict if
    any -- never this archive's names or birth dates, which are other
    hospitals' business."""
    items = data.get("patients") if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) > MAX_BATCH:
        raise ReceiverError(400, f'"patients" must be a list of at most {MAX_BATCH} '
                                 f'{{"id", "issuer", "name", "birth_date"}}')
    out = {}
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("id"), str) or not it["id"]:
            raise ReceiverError(400, 'each patient needs an "id" (the PatientID)')
        pid = it["id"]
        here = local.get_json_or_none(f"/patients/{orthanc_patient_id(pid)}")
        if here is None:
            out[pid] = {"held": False, "conflict": None}
            continue
        tags = here.get("MainDicomTags") or {}
        theirs = Person(_issuer_of(local, here), tags.get("PatientName"), tags.get("PatientBirthDate"))
        mine = Person(it.get("issuer") or None, it.get("name") or None, it.get("birth_date") or None)
        out[pid] = {"held": True, "conflict": conflict(pid, mine, theirs)}
    return {"kontur": KONTUR, "patients": out}


def _issuer_of(local: Any, patient: dict) -> str | None:
    """Issuer of Patient ID of a patient here, from one of its instances."""
    for sid in patient.get("Studies") or []:
        study = local.get_json_or_none(f"/studies/{sid}")
        for series_id in (study or {}).get("Series") or []:
            series = local.series(series_id) or {}
            for iid in series.get("Instances") or []:
                raw = local.raw_or_none(f"/instances/{iid}/content/0010-0021")
                if raw is None:
                    return None
                return raw.decode("utf-8", "replace").strip("\0 ") or None
    return None
