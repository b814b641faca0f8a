# SPDX-License-Identifier: AGPL-3.0-or-later
"""Issue 16 in Debian's Orthanc: a research feed from a "TsAMI" to a
"research" Orthanc, run as the exporting node runs it -- Debian's python3
and python3-pydicom 2.3, ``python3 -m kontur_plugins.research export`` -- on
a corpus with identity planted in 150 places (kontur.testing.research).

What is checked does not use the exporter's own scanner: every delivered file
is searched byte for byte for every planted value (:func:`raw_leaks`, shown
first to find each of them in the originals), and the PS3.15 action each
attribute requires is checked attribute by attribute, and printed.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pydicom
import pytest

from kontur.testing.orthanc import OrthancProcess, wait_for
from kontur.testing.research import Corpus, build_corpus, raw_leaks

pytestmark = pytest.mark.orthanc

REPO = Path(__file__).resolve().parents[2]
NODE_PYTHON = "/usr/bin/python3"
HOSPITALS = {"42-ONCO": "onco", "42-GKB3": "gkb3", "42-PERINATAL": "perinatal"}
PROFILE = {"options": ["retain_modified_dates", "clean_descriptors", "clean_structured_content"],
           "safe_private": [{"tag": "0019,1001", "creator": "KONTUR_SAFE"}]}


def policy(feeds: dict) -> dict:
    return {"research": {"region_code": "42", "link_issuers": ["ENP"], "hospitals": HOSPITALS, "feeds": feeds}}


FEED = {"trial": {"destination": "research", "select": {"hospitals": ["onco", "gkb3"]}, "profile": PROFILE}}


class Feeds:
    """The two Orthancs, the corpus in the TsAMI, and the exporter as the node runs it."""

    def __init__(self, tmp: Path, tsami: OrthancProcess, research: OrthancProcess, corpus: Corpus):
        self.tmp, self.tsami, self.research, self.corpus = tmp, tsami, research, corpus
        self.keymap = tmp / "keymap.sqlite"
        self.secrets = tmp / "research.json"
        self.secrets.write_text(json.dumps({"archive": {"url": tsami.url, "username": tsami.username,
                                                        "password": tsami.password},
                                            "key": os.urandom(32).hex()}))
        self.secrets.chmod(0o600)

    def export(self, feeds: dict = FEED, *args: str, command: str = "export") -> tuple[int, list[dict], str]:
        pol = self.tmp / "policy.json"
        pol.write_text(json.dumps(policy(feeds)))
        env = dict(os.environ, PYTHONPATH=str(REPO / "plugins"))
        p = subprocess.run([NODE_PYTHON, "-m", "kontur_plugins.research", command, "--policy", str(pol),
                            "--secrets", str(self.secrets), "--keymap", str(self.keymap), *args],
                           capture_output=True, text=True, env=env, timeout=600)
        return p.returncode, [json.loads(x) for x in p.stdout.splitlines() if x.strip()], p.stderr

    def delivered(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(io.BytesIO(self.research.request("GET", f"/instances/{i}/file", raw=True)))
                for i in self.research.instance_ids()]


@pytest.fixture
def feeds(tmp_path, processes) -> Feeds:
    research = OrthancProcess("research", {"DefaultEncoding": "Utf8"}, tmp_path / "research")
    processes.append(research)
    research.start()
    # the research node is the TsAMI's Orthanc peer: the exporter holds no credentials of it
    tsami = OrthancProcess("tsami", {"DefaultEncoding": "Utf8", "StableAge": 1, "OrthancPeers": {"research": {
        "Url": research.url + "/", "Username": research.username, "Password": research.password}}},
        tmp_path / "tsami")
    processes.append(tsami)
    tsami.start()
    corpus = build_corpus()
    for item in corpus.items:
        tsami.upload(item.data)
    return Feeds(tmp_path, tsami, research, corpus)


# --- PS3.15 E.1-1: what each planted attribute must become under the feed's profile ----------------------

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


def _md5s(o: OrthancProcess) -> dict[str, str]:
    return {i: hashlib.md5(o.request("GET", f"/instances/{i}/file", raw=True)).hexdigest() for i in o.instance_ids()}


def test_the_corpus_reaches_the_research_node_with_no_leak_and_every_required_action(feeds, capsys):
    corpus = feeds.corpus
    assert len(corpus.planted) >= 40
    # the scanner can fail: in the originals it finds every planted value of every study
    for study in corpus.studies:
        originals = b"".join(i.data for i in corpus.items if i.study == study)
        missed = [w for w, k, v in corpus.planted if w.startswith(study + ":")
                  and not raw_leaks(originals, Corpus(planted=[(w, k, v)]))]
        assert not missed, f"the raw scanner does not find these planted values in the originals: {missed}"
    before = _md5s(feeds.tsami)

    rc, outcomes, err = feeds.export(FEED, "trial")
    assert rc == 0, err + json.dumps(outcomes, ensure_ascii=False, indent=1)

    # 0 leaks, by the independent scanner, in every delivered file
    copies = {i: feeds.research.request("GET", f"/instances/{i}/file", raw=True)
              for i in feeds.research.instance_ids()}
    found = {i: raw_leaks(data, corpus) for i, data in copies.items()}
    assert not any(found.values()), {i: f for i, f in found.items() if f}

    # what is delivered and what is held back, and why
    want = [i for i in corpus.items if i.expect == "delivered"]
    assert len(copies) == len(want), json.dumps(outcomes, ensure_ascii=False, indent=1)
    held = [h["reason"] for o in outcomes for h in o["held"]]
    assert len(held) == sum(i.expect == "held" for i in corpus.items), held
    assert sum("encapsulated document" in r for r in held) == 1
    assert sum("burned-in identity" in r for r in held) == 2          # the OT secondary capture, the US without NO
    by_study = {o["study"]: o for o in outcomes}
    assert sum(not o["selected"] for o in outcomes) == 1             # the perinatal centre's study is not selected
    assert all(o["delivered"] == [] for o in outcomes if not o["selected"])

    # the clinical copy is untouched, and the TsAMI holds nothing new
    assert _md5s(feeds.tsami) == before

    # one pseudonym for Ivanov from two hospitals (his ENP), another for Petrova
    copies_ds = feeds.delivered()
    study_map = dict(sqlite3.connect(feeds.keymap).execute("SELECT new_study_uid, original_study_uid FROM studies"))
    patient_of = {}                                   # original study UID -> corpus patient
    originals = []
    for item in want:
        orig = pydicom.dcmread(io.BytesIO(item.data))
        patient_of[str(orig.StudyInstanceUID)] = corpus.studies[item.study][1]
        originals.append(orig)
    pseudonyms: dict[str, set[str]] = {}
    for c in copies_ds:
        pseudonyms.setdefault(patient_of[study_map[str(c.StudyInstanceUID)]], set()).add(str(c.PatientID))
    assert set(pseudonyms) == {"ivanov", "petrova"} and all(len(v) == 1 for v in pseudonyms.values()), pseudonyms
    assert pseudonyms["ivanov"] != pseudonyms["petrova"]
    assert len({by_study[o]["pseudonym"] for o in by_study if by_study[o]["selected"]}) == 2

    # each copy with its original: the same study (the key map), modality, series and instance number
    pairs = []
    for c in copies_ds:
        o = [o for o in originals if str(o.StudyInstanceUID) == study_map[str(c.StudyInstanceUID)]
             and o.Modality == c.Modality and int(o.InstanceNumber) == int(c.InstanceNumber)
             and o.get("BurnedInAnnotation") == c.get("BurnedInAnnotation")]
        assert len(o) >= 1, c
        pairs.append((o[:1], c))
    rows, failed = [], []
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
    with capsys.disabled():
        print("\nPS3.15 actions on the corpus (attribute | required | applied | example):")
        for r in rows:
            print(" | ".join(str(x) for x in r))
    assert not failed, f"actions not applied: {failed}\n" + "\n".join(" | ".join(map(str, r)) for r in rows)


def _research_state(feeds: Feeds) -> tuple[set[str], dict[str, str]]:
    copies = feeds.delivered()
    return {str(c.SOPInstanceUID) for c in copies}, {str(c.StudyInstanceUID): str(c.PatientID) for c in copies}


def test_the_timer_sends_stable_studies_once_and_a_fresh_run_gives_the_same_pseudonyms_and_uids(feeds):
    # run: what became stable since the last position, through every feed of the node
    wait_for(lambda: all(feeds.tsami.get(f"/studies/{s}")["IsStable"] for s in feeds.tsami.study_ids()),
             60, message="the TsAMI's studies stable")
    rc, outcomes, err = feeds.export(FEED, command="run")
    assert rc == 0, err
    assert sorted(o["study"] for o in outcomes) == sorted(feeds.tsami.study_ids())
    first_uids, first_patients = _research_state(feeds)
    assert len(first_uids) == sum(i.expect == "delivered" for i in feeds.corpus.items)
    # the next run has nothing new; an explicit export skips what the feed delivered once
    rc, outcomes, err = feeds.export(FEED, command="run")
    assert rc == 0 and outcomes == [], (err, outcomes)
    rc, outcomes, err = feeds.export(FEED, "trial")
    assert rc == 0 and sum(o["already"] for o in outcomes) == len(first_uids) and not any(
        o["delivered"] for o in outcomes), outcomes
    # a fresh key map and an empty research node, the same key: the same pseudonyms and UIDs
    for s in feeds.research.study_ids():
        feeds.research.delete(f"/studies/{s}")
    feeds.keymap.unlink()
    rc, outcomes, err = feeds.export(FEED, "trial")
    assert rc == 0, err
    assert _research_state(feeds) == (first_uids, first_patients)


def test_bad_input_is_refused_with_a_message_and_nothing_reaches_the_research_node(feeds):
    rc, _, err = feeds.export(FEED, "nosuchfeed")
    assert rc == 2 and "no feed 'nosuchfeed' here; this node's feeds: trial" in err and "Traceback" not in err
    bad = {"trial": {**FEED["trial"], "profile": {"options": ["clean_pixels"]}}}
    rc, _, err = feeds.export(bad, "trial")
    assert rc == 2 and "'clean_pixels' is not a PS3.15 option kontur knows" in err and "Traceback" not in err
    rc, _, err = feeds.export(FEED, "trial", "--since", "2026-01-01")
    assert rc == 2 and "expected YYYYMMDD" in err
    feeds.secrets.write_text(json.dumps({"archive": {"url": feeds.tsami.url}}))
    rc, _, err = feeds.export(FEED, "trial")
    assert rc == 2 and "has no 'key'" in err and "Traceback" not in err
    assert feeds.research.study_ids() == []
