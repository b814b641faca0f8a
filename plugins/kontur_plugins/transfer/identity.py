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
