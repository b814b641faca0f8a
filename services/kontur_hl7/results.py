# SPDX-License-Identifier: AGPL-3.0-or-later
"""A study's result (``ORU^R01``) as a report inside the study.  Pure: the
parsed result in, the facts kept and the DICOM dataset out.

The report is a **Basic Text SR** (1.2.840.10008.5.1.4.1.1.88.11): the
protocol and the conclusion as text under the concept names of DICOM's basic
diagnostic imaging report (TID 2000: Findings / Conclusions), in UTF-8
(``ISO_IR 192``), so Cyrillic survives and any viewer or archive can read it
as text -- dcm4chee-arc turns ORU into SR the same way (``hl7-oru2dsr.xsl``);
an Encapsulated PDF would fit a result that carries a PDF, which the MIS
results seen so far do not.  It is one more instance of the study, so
replication carries it to the TsAMI as a late instance under every policy.

UIDs are derived from the result (the same result always makes the same SR):
storing it again after a crash is not a second report.  A corrected result
(``C``) is a new SR naming the one it replaces (Predecessor Documents).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid

from .orders import Patient, Result

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
#: the series the reports of a study go into
REPORT_SERIES_NUMBER = 9901
#: what the report copies from the stored study (asked for in the C-FIND)
STUDY_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
              "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def pathology(r: Result, codes: frozenset | set = frozenset()) -> bool:
    """Does the result mark pathology: an abnormal flag (OBX-8: A, AA, H, L,
    ...) or a coded finding the inventory declares as pathology?"""
    return r.abnormal or any(c in codes for c in r.codes)


def report_facts(r: Result, patient: Patient | None, hospital) -> dict:
    """What is kept of a result and what its report is made from."""
    return {"accession": r.accession, "status": r.status, "findings": r.findings, "conclusion": r.conclusion,
            "observer": r.observer, "observed": r.observed, "flags": list(r.flags), "codes": list(r.codes),
            "study_uid": r.study_uid, "institution": getattr(hospital, "title", "") or "",
            "patient": {"id": patient.id, "name": patient.name} if patient else {}}


def digest(report: dict) -> str:
    return hashlib.sha256(json.dumps(report, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _uid(*parts: str) -> str:
    h = hashlib.sha256("\0".join(("kontur-report",) + parts).encode()).digest()[:16]
    return f"2.25.{uuid.UUID(bytes=h).int}"


def sop_uid(study_uid: str, report: dict) -> str:
    return _uid(study_uid, digest(report))


def series_uid(study_uid: str) -> str:
    """The series of the study's reports (one, whatever their number)."""
    return _uid(study_uid, "series")


#: the report's mark of a result that marks pathology (OBX-8 abnormal, or a code the inventory declares):
#: a CODE item "Finding" (DCM 121071) = "Abnormal" (SNOMED CT 263654008).  The TsAMI and a research feed
#: (``pathology_only``) read it from the study itself.
PATHOLOGY_MARK = (("121071", "DCM", "Finding"), ("263654008", "SCT", "Abnormal"))


def _code(value: str, scheme: str, meaning: str):
    from pydicom.dataset import Dataset  # noqa: PLC0415
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def _text_item(concept, text: str):
    from pydicom.dataset import Dataset  # noqa: PLC0415
    i = Dataset()
    i.RelationshipType, i.ValueType = "CONTAINS", "TEXT"
    i.ConceptNameCodeSequence = [concept]
    i.TextValue = text
    return i


def _container(concept, children: list, relationship: str | None = "CONTAINS"):
    from pydicom.dataset import Dataset  # noqa: PLC0415
    c = Dataset()
    if relationship:
        c.RelationshipType = relationship
    c.ValueType = "CONTAINER"
    c.ConceptNameCodeSequence = [concept]
    c.ContinuityOfContent = "SEPARATE"
    c.ContentSequence = children
    return c


def sr_dataset(report: dict, study: dict, *, now: dt.datetime, predecessor: dict | None = None,
               pathology: bool = False):
    """The report as a Basic Text SR of ``study`` (the stored study's patient
    and study attributes, as Orthanc's C-FIND answers them).  ``predecessor``:
    ``{"sop_uid", "series_uid"}`` of the report a corrected result replaces.
    ``pathology``: the result marks pathology (:data:`PATHOLOGY_MARK`)."""
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415
    from pydicom.uid import ExplicitVRLittleEndian  # noqa: PLC0415

    study_uid = study["StudyInstanceUID"]
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = sop_uid(study_uid, report)
    # the stored study's own values: the report files under the same patient and study
    for key in STUDY_KEYS:
        setattr(ds, key, study.get(key, "") or "")
    if study.get("IssuerOfPatientID"):
        ds.IssuerOfPatientID = study["IssuerOfPatientID"]
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_uid(study_uid)
    ds.SeriesNumber = REPORT_SERIES_NUMBER
    ds.SeriesDescription = "Протокол и заключение"
    ds.InstanceNumber = 1
    ds.Manufacturer = "kontur"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    stamp = report.get("observed") or now.strftime("%Y%m%d%H%M%S")
    ds.ContentDate, ds.ContentTime = stamp[:8], stamp[8:14] or "000000"
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    final = report.get("status") in ("final", "corrected")
    ds.CompletionFlag = "COMPLETE" if final else "PARTIAL"
    ds.VerificationFlag = "VERIFIED" if final and report.get("observer") else "UNVERIFIED"
    if ds.VerificationFlag == "VERIFIED":
        v = Dataset()
        v.VerifyingObserverName = report["observer"]
        v.VerifyingOrganization = report.get("institution") or "-"
        v.VerificationDateTime = stamp
        v.VerifyingObserverIdentificationCodeSequence = []
        ds.VerifyingObserverSequence = [v]
    if predecessor:
        ref = Dataset()
        ref.StudyInstanceUID = study_uid
        series = Dataset()
        series.SeriesInstanceUID = predecessor["series_uid"]
        sop = Dataset()
        sop.ReferencedSOPClassUID = BASIC_TEXT_SR
        sop.ReferencedSOPInstanceUID = predecessor["sop_uid"]
        series.ReferencedSOPSequence = [sop]
        ref.ReferencedSeriesSequence = [series]
        ds.PredecessorDocumentsSequence = [ref]
    children = []
    if report.get("findings"):
        children.append(_container(_code("121070", "DCM", "Findings"),
                                   [_text_item(_code("121071", "DCM", "Finding"), report["findings"])]))
    if report.get("conclusion"):
        children.append(_container(_code("121076", "DCM", "Conclusions"),
                                   [_text_item(_code("121077", "DCM", "Conclusion"), report["conclusion"])]))
    if pathology:
        from pydicom.dataset import Dataset  # noqa: PLC0415
        mark = Dataset()
        mark.RelationshipType, mark.ValueType = "CONTAINS", "CODE"
        mark.ConceptNameCodeSequence = [_code(*PATHOLOGY_MARK[0])]
        mark.ConceptCodeSequence = [_code(*PATHOLOGY_MARK[1])]
        children.append(mark)
    root = _container(_code("18748-4", "LN", "Diagnostic Imaging Report"), children, relationship=None)
    for k in root:
        ds.add(k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    import pydicom  # noqa: PLC0415
    if int(pydicom.__version__.split(".")[0]) < 3:      # Debian 12's 2.3 encodes by these
        ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds


def text_of(ds) -> tuple[str, str]:
    """(findings, conclusion) back from a report this module made (tests, status)."""
    out = {"121070": "", "121076": ""}
    for c in getattr(ds, "ContentSequence", []):
        code = c.ConceptNameCodeSequence[0].CodeValue
        if code in out:
            out[code] = "\n".join(str(i.TextValue) for i in c.ContentSequence)
    return out["121070"], out["121076"]
