"""Issue 10 in Debian's Orthanc: the transfer package's gate holds what is not
a complete §5.6 package, lets it go after its fix or an audited release, and
never holds a study whose only gap is the report (which comes later).

A LAMI with kontur's plugin (validation section as the renderer writes it)
receives by C-STORE from a modality and replicates to a plain TsAMI.
"""
from __future__ import annotations

import hashlib
import io
import json
import sqlite3

import pydicom
import pytest
from pydicom.dataset import Dataset

from kontur.testing.dicom import PACKAGE_CODES as CODES
from kontur.testing.dicom import Study, make_instance, package_study, storescu
from kontur.testing.orthanc import HttpError, wait_for
from kontur.testing.replication import SCU_AET, wait_delivered

pytestmark = pytest.mark.orthanc

RULES = ["original_quality", "patient_id", "study_uid", "patient_name", "birth_date", "sex",
         "physician", "procedure", "report"]


def transfer(mode="enforce"):
    return {"enabled": True, "repair_text": True, "issuer": "42-TEST",
            "validation": {"mode": mode, "rules": RULES,
                           "classifier": {"version": "2026-01", "codes": CODES}}}


def send(node, tmp_path, study: Study) -> None:
    paths = study.write(tmp_path / f"send-{study.study_uid}")
    storescu(paths, port=node.dicom_port, called_aet=node.aet, calling_aet=SCU_AET)


def validation(node, study_id: str) -> dict | None:
    try:
        return node.get(f"/kontur/validation/{study_id}")
    except HttpError as exc:
        if exc.status == 404:
            return None
        raise


def wait_state(node, study_id: str, state: str, timeout: float = 60) -> dict:
    wait_for(lambda: (validation(node, study_id) or {}).get("state") == state, timeout,
             message=f"study {study_id} {state} on {node.name}")
    return validation(node, study_id)


def _set(**kw):
    def f(ds):
        for k, v in kw.items():
            if v is None:
                delattr(ds, k)
            else:
                setattr(ds, k, v)
    return f


RULE_CASES = {
    "original_quality": (_set(LossyImageCompression="01"), "Lossy Image Compression"),
    "patient_id": (_set(PatientID=""), "Patient ID (0010,0020) is empty"),
    "study_uid": (None, "Study Instance UID"),
    "patient_name": (_set(PatientName=""), "Patient's Name"),
    "birth_date": (_set(PatientBirthDate="01.01.1970"), "Birth Date"),
    "sex": (_set(PatientSex="X"), "Sex"),
    "physician": (_set(PerformingPhysicianIdentificationSequence=None), "physician's regional code"),
    "procedure": (None, "not in the regional classifier"),
}


def test_each_rule_holds_a_study_that_fails_it_with_its_reason(tmp_path, tsami, make_node):
    """In Orthanc, one LAMI: a study failing each rule is quarantined with that
    rule's reason and stays; the complete one beside them goes."""
    lami = make_node(transfer=transfer())
    studies = {}
    for rule, (mutate, _) in RULE_CASES.items():
        if rule == "study_uid":
            st = package_study(report=True)
            # a UID with a leading zero in a component: not a valid DICOM UID
            bad = st.study_uid.rsplit(".", 1)[0] + ".0" + st.study_uid.rsplit(".", 1)[1]
            st = package_study(report=True, mutate=_set(StudyInstanceUID=bad))
            st.study_uid = bad
            for inst in st.instances:
                inst.study_uid = bad
            # the SR is part of another study UID now: drop it, the rule is about the image's UID
            st.instances = st.instances[:1]
        elif rule == "procedure":
            st = package_study(report=True, code="B99.99.999")
        else:
            st = package_study(report=True, mutate=mutate)
            if rule == "patient_id":
                st.patient_id = ""
                for inst in st.instances:
                    inst.patient_id = ""
        studies[rule] = st
        send(lami, tmp_path, st)
    good = package_study(report=True)
    send(lami, tmp_path, good)
    wait_delivered(tsami, good)
    for rule, st in studies.items():
        sid = st.orthanc_id()
        v = wait_state(lami, sid, "quarantined")
        assert any(RULE_CASES[rule][1] in r for r in v["reasons"]), (rule, v["reasons"])
        assert tsami.sop_uids_of_study(sid) == set(), rule


def test_a_complete_package_goes_and_is_valid(tmp_path, tsami, make_node):
    lami = make_node(transfer=transfer())
    study = package_study(report=True)
    send(lami, tmp_path, study)
    wait_delivered(tsami, study)
    assert validation(lami, study.orthanc_id())["state"] == "valid"


def test_a_study_without_its_report_is_incomplete_and_still_goes(tmp_path, tsami, make_node):
    lami = make_node(transfer=transfer())
    study = package_study()
    send(lami, tmp_path, study)
    wait_delivered(tsami, study)
    v = validation(lami, study.orthanc_id())
    assert v["state"] == "incomplete" and v["reasons"] == [] and v["notes"]


def test_a_quarantined_study_stays_until_its_fix_then_goes(tmp_path, tsami, make_node):
    lami = make_node(transfer=transfer())
    study = package_study(sex="", code="B99.99.999", report=True)
    send(lami, tmp_path, study)
    v = wait_state(lami, study.orthanc_id(), "quarantined")
    assert any("Sex" in r for r in v["reasons"]) and any("B99.99.999" in r and "classifier" in r for r in v["reasons"])
    listing = lami.get("/kontur/quarantine")
    assert [q["study_id"] for q in listing["quarantined"]] == [study.orthanc_id()]
    assert listing["summary"]["quarantined"] == 1
    # held: the replicator's own status says so, and the TsAMI has nothing
    wait_for(lambda: lami.status()["held"] == 1, 30, message="held in the replicator")
    assert tsami.sop_uids_of_study(study.orthanc_id()) == set()
    # the fix, as an operator makes it in Orthanc: modify (new UIDs, ModifiedFrom kept)
    fixed = lami.post(f"/studies/{study.orthanc_id()}/modify",
                      {"Replace": {"PatientSex": "F",
                                   "ProcedureCodeSequence": [{"CodeValue": "A06.09.005", "CodingSchemeDesignator": "RU-804N",
                                                              "CodeMeaning": CODES["A06.09.005"]}]},
                       "Force": True})
    new_id = fixed["ID"]
    wait_for(lambda: len(tsami.sop_uids_of_study(new_id)) == 2, 90, message="the fixed study at the TsAMI")
    assert validation(lami, new_id)["state"] == "valid"
    assert tsami.sop_uids_of_study(study.orthanc_id()) == set()   # the unfixed one never went


def test_release_lets_a_quarantined_study_go_and_is_audited(tmp_path, tsami, make_node):
    lami = make_node(transfer=transfer())
    study = package_study(sex="X", report=True)
    send(lami, tmp_path, study)
    wait_state(lami, study.orthanc_id(), "quarantined")
    with pytest.raises(HttpError) as no_reason:
        lami.post("/kontur/quarantine/release", {"study": study.study_uid})
    assert no_reason.value.status == 400
    res = lami.post("/kontur/quarantine/release", {"study": study.study_uid, "reason": "пол уточнён по МИС"})
    assert res["state"] == "pending" and res["released"]["released_by"] == "kontur"
    wait_delivered(tsami, study)
    db = lami.policy["state_dir"] + "/replication.sqlite3"
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT actor, action, subject, reason FROM audit WHERE action='quarantine released'").fetchall()
    assert rows == [("kontur", "quarantine released", study.orthanc_id(), "пол уточнён по МИС")]
    # a second release of what is no longer held is refused, not repeated
    with pytest.raises(HttpError) as again:
        lami.post("/kontur/quarantine/release", {"study": study.orthanc_id(), "reason": "again"})
    assert again.value.status == 409 and "released already" in again.value.body.decode()


def test_in_warn_mode_the_study_goes_and_the_findings_are_kept(tmp_path, tsami, make_node):
    lami = make_node(transfer=transfer("warn"))
    study = package_study(sex="", report=True)
    send(lami, tmp_path, study)
    wait_delivered(tsami, study)
    v = validation(lami, study.orthanc_id())
    assert v["state"] == "quarantined" and v["mode"] == "warn" and any("Sex" in r for r in v["reasons"])
    metrics = lami.get("/kontur/replication/metrics", raw=True).decode()
    assert 'kontur_transfer_studies{' in metrics and 'state="quarantined"} 1' in metrics


def test_two_hospitals_patients_with_one_patient_id_are_never_merged_at_the_tsami(tmp_path, tsami, make_node):
    """Orthanc keys patients by PatientID alone: hospital B's patient 12345 is
    held at B, quarantined with the reason, while hospital A's 12345 is at the
    TsAMI; the same person again from A goes."""
    a = make_node(transfer={**transfer("warn"), "issuer": "42-A"})
    b = make_node(transfer={**transfer("warn"), "issuer": "42-B"})
    first = package_study(report=True)
    for inst in first.instances:
        ds = pydicom.dcmread(io.BytesIO(inst.data))
        ds.PatientID = "12345"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        inst.data, inst.patient_id = buf.getvalue(), "12345"
    first.patient_id = "12345"
    send(a, tmp_path, first)
    wait_delivered(tsami, first)
    assert tsami.get(f"/studies/{first.orthanc_id()}/instances")[0]["ID"]

    other = package_study(report=True)
    again = package_study(report=True)
    for study, name, birth in ((other, "Петрова^Анна", "19851231"), (again, "Иванов^Пётр", "19700101")):
        for inst in study.instances:
            ds = pydicom.dcmread(io.BytesIO(inst.data))
            ds.PatientID, ds.PatientName, ds.PatientBirthDate = "12345", name, birth
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            inst.data, inst.patient_id = buf.getvalue(), "12345"
        study.patient_id = "12345"
    send(b, tmp_path, other)
    v = wait_state(b, other.orthanc_id(), "quarantined", timeout=90)
    assert any("another hospital (issuer 42-A, here 42-B)" in r for r in v["reasons"]), v["reasons"]
    wait_for(lambda: b.status()["held"] == 1, 30, message="held at hospital B")
    assert tsami.sop_uids_of_study(other.orthanc_id()) == set()
    h = hashlib.sha1(b"12345").hexdigest()
    patient = tsami.get("/patients/" + "-".join(h[i:i + 8] for i in range(0, 40, 8)))
    assert patient["Studies"] == [first.orthanc_id()]
    # the same person from hospital A again: no conflict
    send(a, tmp_path, again)
    wait_delivered(tsami, again)
    # the reason names the other hospital's issuer, never its patient's name or birth date
    assert "Иванов" not in json.dumps(v, ensure_ascii=False) and "19700101" not in json.dumps(v)


def test_cli_quarantine_list_and_release_against_a_node(tmp_path, tsami, make_node, monkeypatch, capsys):
    from kontur.cli import main as kontur_main
    from kontur.testing.replication import node_clients

    lami = make_node(transfer=transfer())
    node_clients(monkeypatch, {"onco-lami": lami})

    def run(*args):
        capsys.readouterr()
        rc = kontur_main(list(args))
        o = capsys.readouterr()
        return rc, o.out, o.err

    study = package_study(sex="", report=True)
    send(lami, tmp_path, study)
    wait_state(lami, study.orthanc_id(), "quarantined")
    rc, out, err = run("quarantine", "list", "--hospital", "onco")
    assert rc == 1 and "HELD" in out and study.orthanc_id() in out and "Sex" in out, (out, err)
    rc, out, _ = run("quarantine", "list", "--hospital", "onco", "--json")
    (row,) = json.loads(out)
    assert row["summary"]["quarantined"] == 1 and row["quarantined"][0]["reasons"]
    rc, out, err = run("quarantine", "list")
    assert rc == 1 and "could not be asked" in err           # the other nodes are down: said, not hidden
    rc, _, err = run("quarantine", "release", study.study_uid, "--reason", " ")
    assert rc == 2 and "--reason is empty" in err
    rc, _, err = run("quarantine", "release", "1.2.3.999", "--reason", "x", "--hospital", "onco")
    assert rc == 2 and "no node holds" in err
    rc, out, err = run("quarantine", "release", study.study_uid, "--reason", "пол уточнён", "--hospital", "onco")
    assert rc == 0 and "released" in out, err
    wait_delivered(tsami, study)
    rc, out, _ = run("quarantine", "list", "--hospital", "onco")
    assert rc == 0 and "released" in out


def test_with_regional_keys_two_hospitals_patients_stay_apart_at_the_tsami(tmp_path, tsami, make_node):
    """patient_key regional: onco's 12345 and gkb3's 12345 become 42-A:12345 and
    42-B:12345 at ingest; both reach the TsAMI as two patients, each with its
    hospital's own ID in Other Patient IDs."""
    nodes = {issuer: make_node(transfer={**transfer("warn"), "issuer": issuer, "patient_key": "regional"})
             for issuer in ("42-A", "42-B")}
    sent = {}
    for issuer, (name, birth) in zip(nodes, (("Иванов^Пётр", "19700101"), ("Петрова^Анна", "19851231"))):
        st = package_study(report=True)
        for inst in st.instances:
            ds = pydicom.dcmread(io.BytesIO(inst.data))
            ds.PatientID, ds.PatientName, ds.PatientBirthDate = "12345", name, birth
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            inst.data = buf.getvalue()
        send(nodes[issuer], tmp_path, st)
        sent[issuer] = st
    for issuer, st in sent.items():
        key = f"{issuer}:12345"
        h = hashlib.sha1(key.encode()).hexdigest()
        pid = "-".join(h[i:i + 8] for i in range(0, 40, 8))
        wait_for(lambda: len(tsami.get("/instances")) >= 4 and _has(tsami, pid), 90, message=f"{key} at the TsAMI")
        patient = tsami.get(f"/patients/{pid}")
        assert patient["MainDicomTags"]["PatientID"] == key
        (study_id,) = patient["Studies"]
        (inst,) = [i for i in tsami.get(f"/studies/{study_id}/instances") if i["MainDicomTags"].get("InstanceNumber") == "1"][:1]
        tags = tsami.get(f"/instances/{inst['ID']}/simplified-tags")
        assert tags["OtherPatientIDsSequence"][0]["PatientID"] == "12345"
        assert tags["OtherPatientIDsSequence"][0]["IssuerOfPatientID"] == issuer
    names = {tsami.get(f"/patients/{p}")["MainDicomTags"]["PatientName"] for p in tsami.get("/patients")}
    assert names == {"Иванов^Пётр", "Петрова^Анна"}


def _has(o, patient_id: str) -> bool:
    try:
        o.get(f"/patients/{patient_id}")
        return True
    except HttpError:
        return False
