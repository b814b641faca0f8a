# SPDX-License-Identifier: AGPL-3.0-or-later
"""The transfer package's rules (issue 10; reglament 004 §5.6): what a study
must carry before it leaves the hospital, and the state that follows.

Pure.  A study is described by :class:`StudyFacts` (the simplified tags of the
first instance of each series, as Orthanc's ``/instances/{id}/simplified-tags``
gives them, and each series' transfer syntax); :func:`evaluate` gives

``valid``        every rule holds;
``incomplete``   only the protocol and conclusion are missing (the report
                 comes later, as an instance in the study, from the MIS);
``quarantined``  any other rule fails -- with every reason.

Rules (each can be switched off per region and per hospital):

``original_quality``  no lossy compression on the way: Lossy Image Compression
                      (0028,2110) is not "01" and no series is in a lossy
                      transfer syntax
``patient_id``, ``study_uid``, ``patient_name``, ``birth_date``, ``sex``
``physician``         the performing physician's regional code and name
``procedure``         the procedure's code, found in the regional classifier,
                      and its name -- the classifier's name (§5.6: "code and
                      name from the regional classifier"; compared without
                      regard to case, spacing, a final full stop or ё/е)
``report``            the protocol text and conclusion: an SR or encapsulated
                      PDF instance in the study
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

RULES = ("original_quality", "patient_id", "study_uid", "patient_name", "birth_date", "sex",
         "physician", "procedure", "report")

DEFAULT_PATHS = {
    # the code: a code sequence whose first item's CodeValue is the regional code
    "physician_code": ["PerformingPhysicianIdentificationSequence/PersonIdentificationCodeSequence"],
    "physician_name": ["PerformingPhysicianName", "PerformingPhysicianIdentificationSequence/PersonName"],
    "procedure_code": ["ProcedureCodeSequence", "RequestedProcedureCodeSequence",
                       "RequestAttributesSequence/RequestedProcedureCodeSequence"],
}

#: transfer syntaxes that lose information (PS3.5 §8 and §10; JPEG-LS near-lossless, lossy JPEG 2000, video)
LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline", "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.81": "JPEG-LS near-lossless", "1.2.840.10008.1.2.4.91": "JPEG 2000 (lossy)",
    "1.2.840.10008.1.2.4.93": "JPEG 2000 Part 2 (lossy)", "1.2.840.10008.1.2.4.100": "MPEG2",
    "1.2.840.10008.1.2.4.101": "MPEG2 High Level", "1.2.840.10008.1.2.4.102": "MPEG-4",
    "1.2.840.10008.1.2.4.103": "MPEG-4 BD", "1.2.840.10008.1.2.4.104": "MPEG-4 2D",
    "1.2.840.10008.1.2.4.105": "MPEG-4 3D", "1.2.840.10008.1.2.4.106": "MPEG-4 stereo",
    "1.2.840.10008.1.2.4.107": "HEVC", "1.2.840.10008.1.2.4.108": "HEVC Main 10",
}
REPORT_MODALITIES = {"SR", "DOC"}
REPORT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR", "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR", "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
}
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_DATE = re.compile(r"^[0-9]{8}$")


@dataclass(frozen=True)
class Settings:
    mode: str = "enforce"                                  # enforce | warn
    rules: frozenset[str] = frozenset(RULES)               # the rules switched on
    paths: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_PATHS))
    classifier_version: str | None = None
    codes: dict[str, str] = field(default_factory=dict)    # regional procedure code -> name


@dataclass
class Series:
    tags: dict[str, Any]                 # simplified tags of its first instance
    transfer_syntax: str | None = None


@dataclass
class StudyFacts:
    series: list[Series]

    @property
    def first(self) -> dict[str, Any]:
        return self.series[0].tags if self.series else {}


@dataclass(frozen=True)
class Validation:
    state: str                          # valid | incomplete | quarantined
    reasons: tuple[str, ...] = ()       # why quarantined (empty otherwise)
    notes: tuple[str, ...] = ()         # what is missing but does not quarantine (the report)

    def to_json(self) -> dict:
        return {"state": self.state, "reasons": list(self.reasons), "notes": list(self.notes)}


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(_text(v) for v in value)
    return str(value).strip()


def same_name(a: str, b: str) -> bool:
    """Are two procedure names the same but for case, spacing, a final full stop or ё/е?"""
    def norm(x: str) -> str:
        return " ".join(x.casefold().replace("ё", "е").split()).rstrip(". ")
    return norm(a) == norm(b)


def _at(tags: dict[str, Any], path: str) -> list[Any]:
    """Values at ``Keyword/Keyword`` (a sequence is followed through all its items)."""
    nodes: list[Any] = [tags]
    for part in path.split("/"):
        nxt: list[Any] = []
        for node in nodes:
            if isinstance(node, dict) and part in node:
                val = node[part]
                nxt.extend(val if isinstance(val, list) and val and isinstance(val[0], dict) else [val])
        nodes = nxt
    return [n for n in nodes if n not in (None, "", [])]


def _code_items(tags: dict[str, Any], paths: list[str]) -> list[dict]:
    out = []
    for path in paths:
        out.extend(v for v in _at(tags, path) if isinstance(v, dict))
    return out


def _check_quality(facts: StudyFacts) -> list[str]:
    found = []
    for s in facts.series:
        if _text(s.tags.get("LossyImageCompression")) == "01":
            found.append(f"series {_text(s.tags.get('SeriesNumber')) or '?'} ({_text(s.tags.get('Modality'))}) "
                         f"was lossy-compressed (Lossy Image Compression 01): the package carries original quality")
        elif s.transfer_syntax in LOSSY_SYNTAXES:
            found.append(f"series {_text(s.tags.get('SeriesNumber')) or '?'} is in {LOSSY_SYNTAXES[s.transfer_syntax]} "
                         f"({s.transfer_syntax}), a lossy transfer syntax: the package carries original quality")
    return found


def evaluate(facts: StudyFacts, settings: Settings) -> Validation:
    on = settings.rules
    images = [s for s in facts.series if _text(s.tags.get("Modality")) not in REPORT_MODALITIES
              and _text(s.tags.get("SOPClassUID")) not in REPORT_CLASSES]
    subject = images[0].tags if images else facts.first
    reasons: list[str] = []
    if "original_quality" in on:
        reasons += _check_quality(StudyFacts(images))
    if "patient_id" in on and not _text(subject.get("PatientID")):
        reasons.append("Patient ID (0010,0020) is empty")
    if "study_uid" in on:
        uid = _text(subject.get("StudyInstanceUID"))
        if not uid or len(uid) > 64 or not _UID.match(uid):
            reasons.append(f"Study Instance UID {uid!r} is not a valid UID")
    if "patient_name" in on and not _text(subject.get("PatientName")).strip("^= "):
        reasons.append("Patient's Name (0010,0010) is empty")
    if "birth_date" in on:
        bd = _text(subject.get("PatientBirthDate"))
        if not _DATE.match(bd):
            reasons.append(f"Patient's Birth Date (0010,0030) is {bd!r}; expected YYYYMMDD" if bd
                           else "Patient's Birth Date (0010,0030) is empty")
    if "sex" in on:
        sex = _text(subject.get("PatientSex"))
        if sex not in ("M", "F", "O"):
            reasons.append(f"Patient's Sex (0010,0040) is {sex!r}; expected M, F or O" if sex
                           else "Patient's Sex (0010,0040) is empty")
    if "physician" in on:
        items = _code_items(subject, settings.paths["physician_code"])
        if not any(_text(i.get("CodeValue")) for i in items):
            reasons.append("the performing physician's regional code is missing (" +
                           " or ".join(settings.paths["physician_code"]) + " > CodeValue)")
        names = [v for p in settings.paths["physician_name"] for v in _at(subject, p)]
        if not any(_text(n).strip("^= ") for n in names):
            reasons.append("the performing physician's name is missing (" + " or ".join(settings.paths["physician_name"]) + ")")
    if "procedure" in on:
        items = [i for i in _code_items(subject, settings.paths["procedure_code"]) if _text(i.get("CodeValue"))]
        if not items:
            reasons.append("the procedure code is missing (" + " or ".join(settings.paths["procedure_code"]) + ")")
        else:
            code = _text(items[0].get("CodeValue"))
            if settings.codes and code not in settings.codes:
                reasons.append(f"procedure code {code!r} is not in the regional classifier "
                               f"(version {settings.classifier_version})")
            meaning = _text(items[0].get("CodeMeaning"))
            if not meaning:
                reasons.append(f"procedure code {code!r} has no name (Code Meaning)")
            elif code in settings.codes and not same_name(meaning, settings.codes[code]):
                reasons.append(f"procedure code {code!r} is named {meaning!r} (Code Meaning), the regional "
                               f"classifier (version {settings.classifier_version}) names it "
                               f"{settings.codes[code]!r}")
    notes: list[str] = []
    if "report" in on:
        has_report = any(_text(s.tags.get("Modality")) in REPORT_MODALITIES
                         or _text(s.tags.get("SOPClassUID")) in REPORT_CLASSES for s in facts.series)
        if not has_report:
            notes.append("the protocol and conclusion are not in the study yet (an SR or PDF instance)")
    if reasons:
        return Validation("quarantined", tuple(reasons), tuple(notes))
    return Validation("incomplete" if notes else "valid", (), tuple(notes))


def blocks(validation: Validation, settings: Settings) -> bool:
    """Does this state stop an automatic send?  Only ``quarantined``, only under ``enforce``."""
    return validation.state == "quarantined" and settings.mode == "enforce"
