# SPDX-License-Identifier: AGPL-3.0-or-later
"""The ``research`` section of the exporting node's policy file: named feeds,
each a selection, a de-identification profile and a destination.

    "research": {
      "region_code": "42",
      "link_issuers": ["ENP"],
      "feeds": {"onco-ct": {
          "destination": "research",
          "select": {"hospitals": ["onco"], "modalities": ["CT"], "since": "20250101"},
          "profile": {"options": ["retain_modified_dates"], "burned_in": "hold"}}},
      "hospitals": {"42-ONCO": "onco"}
    }

A selection's keys all must hold (an empty selection selects nothing: the
inventory refuses it); within a key any listed value does.  A study is
judged by what its instances say (hospital by Issuer of Patient ID, stamped
at ingest; modality and body part per series; description; procedure code;
study date; pathology by the report kontur's HL7 service attached, which marks
a result that marks pathology with :data:`PATHOLOGY_MARK`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .profile import Profile, ProfileError, parse_profile

SELECT_KEYS = ("hospitals", "modalities", "body_parts", "descriptions", "procedure_codes", "since", "until",
               "pathology_only")
#: the CODE item of a report whose result marks pathology: "Finding" (DCM 121071) = "Abnormal" (SNOMED CT
#: 263654008) -- services/kontur_hl7/results.py writes it (a unit test holds the two the same)
PATHOLOGY_MARK = (("121071", "DCM"), ("263654008", "SCT"))
_DATE = re.compile(r"\d{8}")


class FeedError(ProfileError):
    """The research section's problems, every one named (``.problems``)."""


@dataclass(frozen=True)
class Selection:
    hospitals: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    descriptions: tuple[str, ...] = ()
    procedure_codes: tuple[str, ...] = ()
    since: str | None = None
    until: str | None = None
    #: only studies whose report marks pathology
    pathology_only: bool = False

    def empty(self) -> bool:
        return not any(getattr(self, k) for k in SELECT_KEYS)


@dataclass(frozen=True)
class Feed:
    name: str
    destination: str
    select: Selection
    profile: Profile


@dataclass
class StudyFacts:
    """What a feed's selection reads of a study (from its instances' tags)."""
    hospital: str | None = None
    modalities: set[str] = field(default_factory=set)
    body_parts: set[str] = field(default_factory=set)
    description: str = ""
    procedure_codes: set[str] = field(default_factory=set)
    date: str = ""
    pathology: bool = False


@dataclass(frozen=True)
class ResearchConfig:
    feeds: dict[str, Feed] = field(default_factory=dict)
    region_code: str = ""
    #: issuers of identifiers every hospital records for a person (a regional register, the insurance
    #: policy number): a patient who carries one is keyed by it, so two hospitals' records meet
    link_issuers: tuple[str, ...] = ()
    #: Issuer of Patient ID -> hospital key
    hospitals: dict[str, str] = field(default_factory=dict)


def _strings(value, where: str, problems: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problems.append(f"{where} is {value!r}; expected a list of names")
        return ()
    return tuple(v.strip() for v in value)


def parse_selection(doc, where: str, problems: list[str]) -> Selection:
    if not isinstance(doc, dict):
        problems.append(f"{where} is {type(doc).__name__}; expected a mapping of {', '.join(SELECT_KEYS)}")
        return Selection()
    unknown = sorted(set(doc) - set(SELECT_KEYS))
    if unknown:
        problems.append(f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(SELECT_KEYS)}")
    dates = {}
    for k in ("since", "until"):
        v = doc.get(k)
        if v is not None and not (isinstance(v, str) and _DATE.fullmatch(v)):
            problems.append(f"{where}.{k} is {v!r}; expected a date YYYYMMDD")
            v = None
        dates[k] = v
    only = doc.get("pathology_only", False)
    if not isinstance(only, bool):
        problems.append(f"{where}.pathology_only is {only!r}; expected true or false")
        only = False
    sel = Selection(*(_strings(doc.get(k), f"{where}.{k}", problems) for k in SELECT_KEYS[:5]), **dates,
                    pathology_only=only)
    if sel.empty() and not unknown:
        problems.append(f"{where} selects nothing; expected at least one of {', '.join(SELECT_KEYS)}")
    return sel


def parse_research(doc: dict) -> ResearchConfig:
    sec = doc.get("research")
    if sec is None:
        return ResearchConfig()
    problems: list[str] = []
    feeds: dict[str, Feed] = {}
    for name, f in (sec.get("feeds") or {}).items():
        where = f"research.feeds.{name}"
        if not isinstance(f, dict):
            problems.append(f"{where} is {type(f).__name__}; expected a mapping")
            continue
        sel = parse_selection(f.get("select") or {}, f"{where}.select", problems)
        try:
            profile = parse_profile(f.get("profile"), f"{where}.profile")
        except ProfileError as exc:
            problems += exc.problems
            continue
        dest = f.get("destination")
        if not isinstance(dest, str) or not dest:
            problems.append(f"{where}.destination is {dest!r}; expected the research node's name")
            continue
        feeds[name] = Feed(name, dest, sel, profile)
    if problems:
        raise FeedError(problems)
    return ResearchConfig(feeds, str(sec.get("region_code", "")), tuple(sec.get("link_issuers") or ()),
                          dict(sec.get("hospitals") or {}))


def facts_of(datasets, hospitals: dict[str, str]) -> StudyFacts:
    """A study's facts from its instances' datasets (pydicom)."""
    f = StudyFacts()
    for ds in datasets:
        issuer = str(ds.get("IssuerOfPatientID", "") or "").strip()
        if not issuer:
            pid = str(ds.get("PatientID", "") or "")
            issuer = pid.split(":", 1)[0] if ":" in pid else ""
        if issuer in hospitals:
            f.hospital = hospitals[issuer]
        for kw, into in (("Modality", f.modalities), ("BodyPartExamined", f.body_parts)):
            v = str(ds.get(kw, "") or "").strip().upper()
            if v:
                into.add(v)
        f.description = f.description or str(ds.get("StudyDescription", "") or "")
        f.date = f.date or str(ds.get("StudyDate", "") or "")
        for item in ds.get("ProcedureCodeSequence") or []:
            code = str(item.get("CodeValue", "") or "").strip()
            if code:
                f.procedure_codes.add(code)
        f.pathology = f.pathology or _marks_pathology(ds.get("ContentSequence") or [])
    return f


def _code(item, keyword: str) -> tuple[str, str]:
    seq = item.get(keyword) or []
    return (str(seq[0].get("CodeValue", "")), str(seq[0].get("CodingSchemeDesignator", ""))) if seq else ("", "")


def _marks_pathology(content, depth: int = 0) -> bool:
    """Does an SR's content tree hold :data:`PATHOLOGY_MARK` (at any depth, up to 10)?"""
    for item in content:
        if (str(item.get("ValueType", "")) == "CODE" and _code(item, "ConceptNameCodeSequence") == PATHOLOGY_MARK[0]
                and _code(item, "ConceptCodeSequence") == PATHOLOGY_MARK[1]):
            return True
        if depth < 10 and _marks_pathology(item.get("ContentSequence") or [], depth + 1):
            return True
    return False


def matches(sel: Selection, f: StudyFacts) -> tuple[bool, str]:
    """Does the study pass every key of the selection?  (yes/no, why)"""
    if sel.empty():
        return False, "the selection selects nothing"
    if sel.hospitals and f.hospital not in sel.hospitals:
        return False, f"hospital {f.hospital or 'unknown'} is not one of {', '.join(sel.hospitals)}"
    if sel.modalities and not f.modalities & {m.upper() for m in sel.modalities}:
        return False, f"modalities {', '.join(sorted(f.modalities)) or 'none'} not among {', '.join(sel.modalities)}"
    if sel.body_parts and not f.body_parts & {b.upper() for b in sel.body_parts}:
        return False, f"body parts {', '.join(sorted(f.body_parts)) or 'none'} not among {', '.join(sel.body_parts)}"
    if sel.descriptions and not any(d.casefold() in f.description.casefold() for d in sel.descriptions):
        return False, "the study description matches none of the feed's"
    if sel.procedure_codes and not f.procedure_codes & set(sel.procedure_codes):
        return False, "no procedure code of the feed's"
    if sel.since and not (f.date and f.date >= sel.since):
        return False, f"study date {f.date or 'unknown'} before {sel.since}"
    if sel.until and not (f.date and f.date <= sel.until):
        return False, f"study date {f.date or 'unknown'} after {sel.until}"
    if sel.pathology_only and not f.pathology:
        return False, "no report of the study marks pathology (yet: the study is judged again when one comes)"
    return True, "selected"
