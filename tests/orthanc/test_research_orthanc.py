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
from kontur.testing.research_actions import PROFILE, action_table

pytestmark = pytest.mark.orthanc

REPO = Path(__file__).resolve().parents[2]
NODE_PYTHON = "/usr/bin/python3"
HOSPITALS = {"42-ONCO": "onco", "42-GKB3": "gkb3", "42-PERINATAL": "perinatal"}


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
    # a hospital's archive, where a re-identified study may go back for clinical use
    clinical = OrthancProcess("onco-lami", {"DefaultEncoding": "Utf8"}, tmp_path / "onco-lami")
    processes.append(clinical)
    clinical.start()
    # the research node is the TsAMI's Orthanc peer: the exporter holds no credentials of it
    tsami = OrthancProcess("tsami", {"DefaultEncoding": "Utf8", "StableAge": 1, "OrthancPeers": {
        name: {"Url": o.url + "/", "Username": o.username, "Password": o.password}
        for name, o in (("research", research), ("onco-lami", clinical))}}, tmp_path / "tsami")
    processes.append(tsami)
    tsami.start()
    corpus = build_corpus()
    for item in corpus.items:
        tsami.upload(item.data)
    feeds = Feeds(tmp_path, tsami, research, corpus)
    feeds.clinical = clinical
    return feeds


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

    rows, failed = action_table(originals, copies_ds, study_map)
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


def test_an_export_waits_for_the_run_already_holding_the_key_map(feeds):
    """The timer's run and an operator's export never judge and send side by side: the second waits on the
    key map's lock (seen in the kernel's lock table as a blocked waiter) and runs once the first is done."""
    import fcntl
    holder = open(str(feeds.keymap) + ".lock", "a")
    fcntl.flock(holder, fcntl.LOCK_EX)
    pol = feeds.tmp / "policy.json"
    pol.write_text(json.dumps(policy(FEED)))
    second = subprocess.Popen([NODE_PYTHON, "-m", "kontur_plugins.research", "export", "--policy", str(pol),
                               "--secrets", str(feeds.secrets), "--keymap", str(feeds.keymap), "trial"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO / "plugins")))
    try:
        wait_for(lambda: any(line.split()[1:2] == ["->"] and line.split()[-4:-3] == [str(second.pid)]
                             for line in Path("/proc/locks").read_text().splitlines()),
                 60, message="the second export waiting on the key map's lock")
        assert second.poll() is None and not feeds.keymap.exists() and feeds.research.instance_ids() == []
    finally:
        holder.close()
        out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    assert len(feeds.research.instance_ids()) == sum(i.expect == "delivered" for i in feeds.corpus.items)


def test_a_pathology_only_feed_takes_the_study_whose_report_marks_pathology(feeds):
    """The HL7 service's report of a result marking pathology (services/kontur_hl7/results.py, as it
    attaches it) in one corpus study at the TsAMI: a ``pathology_only`` feed selects that study alone."""
    import datetime as dt
    import sys
    sys.path.insert(0, str(REPO / "services"))
    from kontur_hl7 import results
    item = next(i for i in feeds.corpus.items if i.kind == "CT")
    ct = pydicom.dcmread(io.BytesIO(item.data))
    study = {k: str(ct.get(k, "") or "") for k in results.STUDY_KEYS}
    report = {"accession": study["AccessionNumber"], "status": "final", "findings": "Очаг в S6.",
              "conclusion": "Образование правого лёгкого.", "observer": "", "observed": "", "flags": ["A"],
              "codes": [], "study_uid": study["StudyInstanceUID"], "institution": "", "patient": {}}
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, results.sr_dataset(report, study, now=dt.datetime.now(), pathology=True),
                     enforce_file_format=True)
    feeds.tsami.upload(buf.getvalue())
    patho = {"patho": {"destination": "research", "select": {"pathology_only": True}, "profile": PROFILE}}
    rc, outcomes, err = feeds.export(patho, "patho")
    assert rc == 0, err
    chosen = [o for o in outcomes if o["selected"]]
    assert len(chosen) == 1 and len(outcomes) == len(feeds.corpus.studies), outcomes
    assert feeds.tsami.get(f"/studies/{chosen[0]['study']}")["MainDicomTags"]["StudyInstanceUID"] == \
        str(ct.StudyInstanceUID)
    assert all("marks pathology" in o["reason"] for o in outcomes if not o["selected"])
    assert chosen[0]["delivered"] and not any(o["delivered"] for o in outcomes if not o["selected"])


def test_reidentify_sends_the_original_studies_back_to_a_clinical_archive_and_audits_each_send(feeds):
    """Seed 001: an image returns to clinical use.  ``reidentify --send-to PEER`` sends the original
    studies behind a pseudonym from the TsAMI to the hospital's archive (its Orthanc peer), byte for byte,
    each send audited; an archive that lost the original says so, audited, exit 1."""
    rc, outcomes, err = feeds.export(FEED, "trial")
    assert rc == 0, err
    ivanov = next(o for o in outcomes if o["selected"] and o["pseudonym"] and
                  feeds.corpus.studies[_corpus_study(feeds, o["study"])][1] == "ivanov")
    id_of = {feeds.tsami.get(f"/studies/{o['study']}")["MainDicomTags"]["StudyInstanceUID"]: o["study"]
             for o in outcomes if o["pseudonym"] == ivanov["pseudonym"]}
    originals = set(id_of)
    assert len(originals) == 2                                    # his studies of two hospitals

    def reidentify(*extra):
        env = dict(os.environ, PYTHONPATH=str(REPO / "plugins"))
        p = subprocess.run([NODE_PYTHON, "-m", "kontur_plugins.research", "reidentify", "--keymap",
                            str(feeds.keymap), "--who", "archivist", "--reason", "повторное обращение", *extra,
                            ivanov["pseudonym"]], capture_output=True, text=True, env=env, timeout=600)
        return p.returncode, json.loads(p.stdout.splitlines()[-1]) if p.stdout.strip() else {}, p.stderr

    rc, answer, err = reidentify("--send-to", "onco-lami")
    assert rc == 2 and "--send-to needs --secrets" in err
    rc, answer, err = reidentify("--send-to", "onco-lami", "--secrets", str(feeds.secrets))
    assert rc == 0, err
    assert {s["study_uid"] for s in answer["sent"]} == originals
    back = {feeds.clinical.get(f"/studies/{s}")["MainDicomTags"]["StudyInstanceUID"] for s in feeds.clinical.study_ids()}
    assert back == originals
    assert set(_md5s(feeds.clinical).values()) <= set(_md5s(feeds.tsami).values())   # the originals, unchanged
    # the TsAMI lost one of them: named, audited, exit 1
    lost = sorted(originals)[0]
    feeds.tsami.delete(f"/studies/{id_of[lost]}")
    rc, answer, err = reidentify("--send-to", "onco-lami", "--secrets", str(feeds.secrets))
    assert rc == 1 and lost in answer["problem"] and "no longer in this archive" in answer["problem"], answer
    trail = [json.loads(x)["answer"] for x in subprocess.run(
        [NODE_PYTHON, "-m", "kontur_plugins.research", "audit", "--keymap", str(feeds.keymap)], capture_output=True,
        text=True, env=dict(os.environ, PYTHONPATH=str(REPO / "plugins")), timeout=60).stdout.splitlines()]
    assert sum(a.startswith("sent: the original study") for a in trail) == 2 + (len(answer["sent"]))
    assert trail[-1].startswith("not sent: the original study " + lost)


def _corpus_study(feeds: Feeds, orthanc_id: str) -> str:
    """The corpus's key of the study with this Orthanc ID at the TsAMI."""
    uid = feeds.tsami.get(f"/studies/{orthanc_id}")["MainDicomTags"]["StudyInstanceUID"]
    for item in feeds.corpus.items:
        if str(pydicom.dcmread(io.BytesIO(item.data), stop_before_pixels=True).StudyInstanceUID) == uid:
            return item.study
    raise KeyError(uid)


def test_instances_that_defeat_de_identification_are_held_back_named_and_leak_nothing(feeds):
    """Issue 16's bad input at export: a private element whose creator is missing (Orthanc keeps such an
    element), an SR whose content item has no value, an SR whose content tree is garbage bytes (VR UN)
    holding the patient's name.  Each instance is either delivered clean or held back with its reason;
    nothing of the patient reaches the research node; a failure makes the run exit 1."""
    from kontur.testing.research import Corpus
    ct = next(i for i in feeds.corpus.items if i.kind == "CT" and i.hospital == "onco")
    sr = next(i for i in feeds.corpus.items if i.kind == "SR")
    name = feeds.corpus.patients[feeds.corpus.studies[sr.study][1]].name
    made = []

    def variant(item, change, tail: bytes = b""):
        ds = pydicom.dcmread(io.BytesIO(item.data))
        ds.StudyInstanceUID = pydicom.uid.generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
        ds.SeriesInstanceUID = pydicom.uid.generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
            prefix="1.2.826.0.1.3680043.8.498.")
        change(ds)
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        answer = feeds.tsami.upload(buf.getvalue() + tail)
        made.append((answer["ParentStudy"], str(ds.StudyInstanceUID)))

    def orphan(ds):
        del ds[0x00090010]                                   # the creator gone, its element kept
        ds.add_new(0x00091003, "LO", name)

    def empty_item(ds):
        text = next(i for i in ds.ContentSequence if i.ValueType == "TEXT")
        del text.TextValue

    def no_content(ds):                                      # written as raw bytes after the rest
        for tag in [t for t in ds.keys() if t >= 0x0040A730]:
            del ds[tag]

    junk = b"\xfe\xff\x00\xe0\x10\x00\x00\x00" + name.encode()
    junk += b"\x00" * (len(junk) % 2)
    garbage = b"\x40\x00\x30\xa7UN\x00\x00" + len(junk).to_bytes(4, "little") + junk

    variant(ct, orphan)
    variant(sr, empty_item)
    variant(sr, no_content, garbage)
    rc, outcomes, err = feeds.export(FEED, "trial", *[sid for sid, _ in made])
    assert "Traceback" not in err, err
    by_study = {o["study"]: o for o in outcomes}
    for sid, _uid in made:
        o = by_study[sid]
        assert o["selected"], o
        assert len(o["delivered"]) + len(o["held"]) == 1, o
        assert all(h["reason"] for h in o["held"]), o
    failed = [h for o in outcomes for h in o["held"] if h["reason"].startswith("de-identification failed")]
    assert rc == (1 if failed else 0), (rc, outcomes)
    raw = b"".join(feeds.research.request("GET", f"/instances/{i}/file", raw=True)
                   for i in feeds.research.instance_ids())
    assert not raw_leaks(raw, Corpus(planted=[("the name", "name", name)])), "the patient's name reached the research node"
    assert not any(uid.encode() in raw for _, uid in made)
    print(json.dumps([by_study[sid] for sid, _ in made], ensure_ascii=False, indent=1))


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
