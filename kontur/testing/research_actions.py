# SPDX-License-Identifier: AGPL-3.0-or-later
"""PS3.15 E.1-1 on the research corpus (kontur.testing.research): what each
planted attribute must become under the test feed's profile (Retain Modified
Dates, Clean Descriptors, Clean Structured Content, one safe private element),
checked copy by copy against its original, written apart from the exporter.

:func:`action_table` is shared by the loopback test (tests/orthanc) and the lab
test (tests/deploy): one table per attribute, (attribute, required action,
applied/seen, an example), and the attributes where an action was not applied.
"""
from __future__ import annotations

import datetime as dt

#: the test feed's profile, as the exporter's policy file and as the inventory write it
PROFILE = {"options": ["retain_modified_dates", "clean_descriptors", "clean_structured_content"],
           "safe_private": [{"tag": "0019,1001", "creator": "KONTUR_SAFE"}]}


def _absent(o, c, kw):
    return kw not in c, "absent" if kw not in c else f"present: {c.get(kw)!r}"


def _empty(o, c, kw):
    v = c.get(kw)
    return (v is None or str(v) == ""), "empty" if not v else f"{v!r}"


def _not_original(o, c, kw):
    v = c.get(kw)
    return (v is None or str(v) != str(o.get(kw))), "absent" if v is None else f"{v!r}"


def _dummy(o, c, kw):
    v = str(c.get(kw, ""))
    return bool(v) and v != str(o.get(kw)), f"{v!r}"


def _cleaned(o, c, kw):
    v = c.get(kw)
    return v is None or str(v) != str(o.get(kw)), "absent" if v is None else f"{str(v)!r}"


def _mapped(o, c, kw):
    v = str(c.get(kw, ""))
    return v.startswith("2.25.") and v != str(o.get(kw)), v[:20] + "..."


def _kept(o, c, kw):
    return str(c.get(kw)) == str(o.get(kw)), f"{c.get(kw)!r}"


def _private(tag, want):
    def check(o, c, _kw):
        have = tag in c
        return have == want, ("kept: " + repr(c[tag].value)) if have else "absent"
    return check


def _nested(seq, kw, check):
    def f(o, c, _kw):
        oi = o[seq][0] if seq in o and o[seq].value else None
        ci = c[seq][0] if seq in c and c[seq].value else None
        if ci is None:
            return True, f"{seq} absent"
        return check(oi, ci, kw)
    return f


#: (attribute, PS3.15 action for it (basic, then the option that changes it), check)
ACTIONS = [
    ("PatientName", "Z (a dummy: the pseudonym)", _dummy),
    ("PatientID", "Z (a dummy: the pseudonym)", _dummy),
    ("PatientBirthDate", "Z", _empty),
    ("PatientSex", "Z (K only under Retain Patient Characteristics)", _empty),
    ("PatientAge", "X (K only under Retain Patient Characteristics)", _absent),
    ("OtherPatientIDsSequence", "X", _absent),
    ("OtherPatientNames", "X", _absent),
    ("PatientMotherBirthName", "X", _absent),
    ("PatientAddress", "X", _absent),
    ("PatientTelephoneNumbers", "X", _absent),
    ("IssuerOfPatientID", "X", _absent),
    ("AccessionNumber", "Z", _empty),
    ("StudyID", "Z", _empty),
    ("InstitutionName", "X/Z/D", _not_original),
    ("InstitutionAddress", "X", _absent),
    ("InstitutionalDepartmentName", "X", _absent),
    ("ReferringPhysicianName", "Z", _empty),
    ("ReferringPhysicianTelephoneNumbers", "X", _absent),
    ("PerformingPhysicianName", "X", _absent),
    ("OperatorsName", "X/Z/D", _not_original),
    ("NameOfPhysiciansReadingStudy", "X", _absent),
    ("PhysiciansOfRecord", "X", _absent),
    ("RequestingPhysician", "X", _absent),
    ("StationName", "X/Z/D (K only under Retain Device Identity)", _not_original),
    ("DeviceSerialNumber", "X/Z/D (K only under Retain Device Identity)", _not_original),
    ("MilitaryRank", "X", _absent),
    ("Occupation", "X", _absent),
    ("AdditionalPatientHistory", "X (K only under Retain Patient Characteristics)", _absent),
    ("PatientComments", "X (C under Clean Descriptors)", _cleaned),
    ("RequestAttributesSequence", "X", _absent),
    ("StudyDescription", "X, C under Clean Descriptors", _cleaned),
    ("SeriesDescription", "X, C under Clean Descriptors", _cleaned),
    ("ProtocolName", "X/D, C under Clean Descriptors", _cleaned),
    ("ImageComments", "X, C under Clean Descriptors", _cleaned),
    ("DerivationDescription", "X, C under Clean Descriptors", _cleaned),
    ("PerformedProcedureStepDescription", "X, C under Clean Descriptors", _cleaned),
    ("StudyInstanceUID", "U", _mapped),
    ("SeriesInstanceUID", "U", _mapped),
    ("SOPInstanceUID", "U", _mapped),
    ("FrameOfReferenceUID", "U", _mapped),
    ("ReferencedImageSequence > ReferencedSOPInstanceUID", "U",
     _nested("ReferencedImageSequence", "ReferencedSOPInstanceUID", _mapped)),
    ("ReferencedImageSequence > PatientName", "X (a name inside a kept sequence)",
     _nested("ReferencedImageSequence", "PatientName", _absent)),
    ("ReferencedImageSequence > private (0011,1001)", "X (private)",
     _nested("ReferencedImageSequence", None, _private(0x00111001, False))),
    ("private (0009,1001) LO", "X (private)", _private(0x00091001, False)),
    ("private (0009,1002) OB", "X (private)", _private(0x00091002, False)),
    ("private (0019,1001), listed safe", "K (Retain Safe Private)", _private(0x00191001, True)),
    ("StudyTime", "Z, kept under Modified Dates (whole days)", _kept),
    ("VerifyingObserverSequence > VerifyingObserverName", "D",
     _nested("VerifyingObserverSequence", "VerifyingObserverName", _not_original)),
    ("VerifyingObserverSequence > VerifyingOrganization", "X",
     _nested("VerifyingObserverSequence", "VerifyingOrganization", _absent)),
    ("ContentCreatorName", "Z", _empty),
]
DATES = ("StudyDate", "SeriesDate", "ContentDate")      # C under Retain ... Modified Dates: one offset per patient


def _days(a: str, b: str) -> int:
    d = lambda s: dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))  # noqa: E731
    return (d(a) - d(b)).days


def action_table(originals: list, copies_ds: list, study_map: dict[str, str]) -> tuple[list[tuple], list[str]]:
    """Each delivered copy (pydicom datasets) paired with its original (by the key map's ``study_map``,
    new study UID -> original, then modality, instance number and burned-in mark); every ACTIONS row
    checked on every pair that has the attribute, the dates' per-patient offset, the SR's cleaned
    content and the de-identification marks.  (rows, failed)"""
    # each copy with its original: the same study (the key map), modality, series and instance number
    pairs, rows, failed = [], [], []
    for c in copies_ds:
        o = [o for o in originals if str(o.StudyInstanceUID) == study_map[str(c.StudyInstanceUID)]
             and o.Modality == c.Modality and int(o.InstanceNumber) == int(c.InstanceNumber)
             and o.get("BurnedInAnnotation") == c.get("BurnedInAnnotation")]
        if not o:
            failed.append(f"the copy {c.SOPInstanceUID} ({c.Modality}) matches no original")
            continue
        pairs.append((o[:1], c))
    for attr, action, check in ACTIONS:
        kw = attr.split(" > ")[-1] if " > " in attr else attr
        seen = ok = 0
        example = ""
        for cands, c in pairs:
            for o in cands:
                top = attr.split(" > ")[0]
                if not top.startswith("private") and top not in o:
                    continue
                if top.startswith("private") and int(attr.split("(")[1][:4], 16) * 0x10000 + int(
                        attr.split(",")[1][:4], 16) not in o:
                    continue
                seen += 1
                good, example = check(o, c, kw)
                ok += bool(good)
                break
        rows.append((attr, action, f"{ok}/{seen}", example))
        if seen == 0 or ok != seen:
            failed.append(attr)
    # dates: one offset per patient, 30 days to 10 years back, across studies and hospitals
    offsets: dict[str, set[int]] = {}
    for cands, c in pairs:
        for o in cands:
            for kw in DATES:
                if kw in o and o.get(kw):
                    offsets.setdefault(str(c.PatientID), set()).add(_days(str(c.get(kw)), str(o.get(kw))))
    rows.append(("StudyDate, SeriesDate, ContentDate", "Z/X/D, C under Modified Dates",
                 f"offsets per patient: {sorted(map(sorted, offsets.values()))}", ""))
    if not offsets or any(len(v) != 1 or not -3680 <= next(iter(v)) <= -30 for v in offsets.values()):
        failed.append("dates")
    # the SR's content, cleaned
    sr = next(c for c in copies_ds if c.Modality == "SR")
    text = next(i for i in sr.ContentSequence if i.ValueType == "TEXT").TextValue
    pname = next(i for i in sr.ContentSequence if i.ValueType == "PNAME")
    rows.append(("ContentSequence > TEXT", "X, C under Clean Structured Content", repr(text), ""))
    rows.append(("ContentSequence > PNAME", "X, C: a dummy", repr(str(pname.get("PersonName"))), ""))
    if "очаг" not in text or str(pname.get("PersonName")) in ("", "None"):
        failed.append("SR content")
    marks = [str(c.get("PatientIdentityRemoved")) == "YES" and str(c.get("LongitudinalTemporalInformationModified"))
             == "MODIFIED" and {i.CodeValue for i in c.DeidentificationMethodCodeSequence}
             == {"113100", "113104", "113105", "113107"} for c in copies_ds]
    rows.append(("PatientIdentityRemoved, method codes", "YES; 113100 + the options", f"{sum(marks)}/{len(marks)}", ""))
    if not all(marks):
        failed.append("marks")
    return rows, failed
