"""Results into studies (issue 12): an ORU^R01 from the MIS, through the HL7
service, becomes a Basic Text SR inside its study on a real Orthanc (the
service's C-FIND and C-STORE, as a peer of its Orthanc); read back from
Orthanc by pydicom."""
from __future__ import annotations

import io
import signal

import pydicom
import pytest

from kontur.testing.dicom import make_study
from kontur.testing.hl7 import REPORTS_AET, Hl7Service, orm, oru, sqlite_only
from kontur.testing.orthanc import wait_for
from kontur.testing.replication import SCU_AET

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def text_of(ds) -> tuple[str, str]:
    """(findings, conclusion) of a report: the TEXT under DICOM's Findings and Conclusions containers."""
    out = {"121070": "", "121076": ""}
    for c in ds.ContentSequence:
        code = c.ConceptNameCodeSequence[0].CodeValue
        if code in out:
            out[code] = "\n".join(str(i.TextValue) for i in c.ContentSequence)
    return out["121070"], out["121076"]

pytestmark = pytest.mark.orthanc


def _modalities() -> dict:
    return {"DicomModalities": {
        "test-scu": {"AET": SCU_AET, "Host": "127.0.0.1", "Port": 11112, "AllowStore": True, "AllowEcho": True},
        # the HL7 service as the renderer admits it: from loopback, to find a study and store its report
        "kontur-hl7": {"AET": REPORTS_AET, "Host": "127.0.0.1", "Port": 104, "AllowStore": True, "AllowFind": True,
                       "AllowEcho": True, "AllowMove": False, "AllowGet": False}},
        "DicomAlwaysAllowFind": False, "DicomCheckModalityHost": True}


@pytest.fixture
def lami(tmp_path, processes, make_node, backend):
    node = make_node(mode="all", extra_config=_modalities())
    o = node.orthanc
    hl7 = Hl7Service(tmp_path / "hl7", reports={"host": "127.0.0.1", "port": o.dicom_port, "called_aet": o.aet},
                     **backend)
    hl7.start()
    yield node, hl7
    hl7.stop(signal.SIGKILL)
    print("the HL7 service's log:\n" + hl7.log.read_text()[-4000:])     # shown when the test failed


def _status(o, value: str) -> dict:
    body = o.get(f"/kontur/study/{value}")
    sent = [x for x in body["steps"] if x["step"] == "notified"]
    body["notified_kinds"] = sent[0]["detail"].split(", ") if sent else []
    return body


def _told(hl7, mis) -> str:
    """What each side holds when the MIS lacks a notification: for the failure's message."""
    with hl7.db() as db:
        notes = [dict(r) for r in db.execute("SELECT kind, state, attempts, last_error, ack_code FROM notifications")]
        events = [tuple(r) for r in db.execute("SELECT kind, study_id FROM study_events")]
    tail = "".join(hl7.log.read_text(encoding="utf-8").splitlines(True)[-15:])
    return (f"the MIS got {len(mis.messages)}; the service's notifications {notes}; its study events {events}; "
            f"the service's log:\n{tail}")


def _reports(o, study_id: str) -> list[pydicom.Dataset]:
    out = []
    for s in o.get(f"/studies/{study_id}/series"):
        if s["MainDicomTags"].get("Modality") == "SR":
            for i in s["Instances"]:
                out.append(pydicom.dcmread(io.BytesIO(o.get(f"/instances/{i}/file", raw=True))))
    return out


def _research_facts(datasets):
    """What a research feed reads of a study (the plugin's own code, as the TsAMI runs it)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))
    from kontur_plugins.research.feeds import facts_of
    return facts_of(datasets, {})


def test_a_result_becomes_a_report_inside_its_study_with_its_text_intact(lami):
    node, hl7 = lami
    with hl7.client() as c:
        assert b"MSA|AA|" in c.send_message(orm(cid="M1"))
    uid = hl7.items()[0]["study_uid"]
    study = make_study(2, patient_id="12345", study_uid=uid, patient_name="Иванов^Пётр^Ильич")
    node.store(study)
    with hl7.client() as c:
        answer = c.send_message(oru(cid="R1", conclusion="Образование правого лёгкого.", flag="A"))
    assert b"MSA|AA|R1" in answer, answer
    reports = wait_for(lambda: _reports(node.orthanc, study.orthanc_id()), 30, message="the report in the study")
    assert len(reports) == 1
    ds = reports[0]
    assert ds.SOPClassUID == BASIC_TEXT_SR and ds.StudyInstanceUID == uid
    assert text_of(ds) == ("Очаговых изменений в лёгких не выявлено.", "Образование правого лёгкого.")
    assert str(ds.PatientName) == "Иванов^Пётр^Ильич"
    # the service records the report attached once Orthanc has answered its C-STORE: after it is visible
    (r,) = wait_for(lambda: all(x["state"] != "waiting" for x in hl7.results()) and hl7.results(), 30,
                    message="the result recorded attached")
    assert (r["state"], r["pathology"], r["sop_uid"]) == ("attached", 1, ds.SOPInstanceUID)
    # the report says so itself: a research feed's pathology_only reads it at the TsAMI
    assert _research_facts([ds]).pathology
    # the same result again: nothing new
    with hl7.client() as c:
        assert "the same result again" in c.send_message(oru(cid="R2", conclusion="Образование правого лёгкого.",
                                                            flag="A")).decode()
    assert len(hl7.results()) == 1


@sqlite_only()
def test_a_result_before_its_study_waits_and_is_attached_when_the_study_arrives(lami):
    node, hl7 = lami
    with hl7.client() as c:
        assert b"MSA|AA|" in c.send_message(orm(cid="M1"))
        assert b"MSA|AA|R1" in c.send_message(oru(cid="R1"))
    uid = hl7.items()[0]["study_uid"]
    wait_for(lambda: hl7.results()[0]["reason"] == "its study is not on this node yet", 30,
             message="the result waiting for its study")
    study = make_study(2, patient_id="12345", study_uid=uid)
    node.store(study)
    wait_for(lambda: _reports(node.orthanc, study.orthanc_id()), 30, message="the report attached on arrival")
    assert hl7.results()[0]["state"] == "attached"


@sqlite_only()
def test_a_result_for_no_known_order_is_refused_kept_and_attached_when_its_study_comes(lami):
    """No order and no Study Instance UID: AE with the reason, the result
    kept; a study with that accession number arrives: the report goes in."""
    node, hl7 = lami
    with hl7.client() as c:
        answer = c.send_message(oru(cid="R1", accession="WALKIN7")).decode()
    assert "MSA|AE|R1" in answer and "no order or study is known for accession WALKIN7" in answer, answer
    assert hl7.results()[0]["state"] == "waiting"
    study = make_study(1, patient_id="12345", accession="WALKIN7")
    node.store(study)
    reports = wait_for(lambda: _reports(node.orthanc, study.orthanc_id()), 30, message="the parked result attached")
    assert reports[0].AccessionNumber == "WALKIN7"


@sqlite_only()
def test_a_corrected_result_adds_the_report_that_replaces_the_first(lami):
    node, hl7 = lami
    with hl7.client() as c:
        c.send_message(orm(cid="M1"))
        uid = hl7.items()[0]["study_uid"]
        study = make_study(1, patient_id="12345", study_uid=uid)
        node.store(study)
        assert b"MSA|AA|" in c.send_message(oru(cid="R1", conclusion="Без патологии."))
        wait_for(lambda: _reports(node.orthanc, study.orthanc_id()), 30, message="the first report")
        assert b"MSA|AA|" in c.send_message(oru(cid="R2", status="C", conclusion="Образование, T1N0.", flag="A"))
    reports = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(_reports(node.orthanc, study.orthanc_id())),
                       30, message="the corrected report")
    first, fixed = sorted(reports, key=lambda d: hasattr(d, "PredecessorDocumentsSequence"))
    ref = fixed.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert text_of(fixed)[1] == "Образование, T1N0."
    assert [r["state"] for r in hl7.results()] == ["superseded", "attached"]
    # the first stays in the study as the record of what was said; the viewer page shows the one in force
    page = node.orthanc.get(f"/kontur/view/12345/-/{uid}", raw=True).decode("utf-8")
    assert "Образование, T1N0." in page and "Без патологии." not in page and "заменяет предыдущее" in page


@sqlite_only()
def test_a_result_for_a_cancelled_order_is_refused_and_kept(lami):
    node, hl7 = lami
    with hl7.client() as c:
        c.send_message(orm(cid="M1"))
        c.send_message(orm("CA", cid="M2"))
        answer = c.send_message(oru(cid="R1")).decode()
    assert "MSA|AE|R1" in answer and "its order was cancelled" in answer, answer
    assert hl7.results() == []
    with hl7.db() as db:
        assert db.execute("SELECT ack_code FROM messages WHERE control_id='R1'").fetchone()[0] == "AE"


def test_a_result_marking_pathology_sends_its_study_under_the_pathology_policy(tmp_path, processes, make_node,
                                                                                tsami, backend):
    """Reglament §3.2: under ``pathology`` only studies with a pathology go to
    the TsAMI.  The result's abnormal flag (OBX-8 A) sets the study's flag:
    it goes, its report with it; the study whose result is normal stays."""
    node = make_node(mode="pathology", extra_config=_modalities(), start=False)
    o = node.orthanc
    hl7 = Hl7Service(tmp_path / "hl7", reports={"host": "127.0.0.1", "port": o.dicom_port, "called_aet": o.aet},
                     **backend)
    node_policy = node.policy
    node_policy["worklist"] = {"enabled": True, "db": hl7.database}
    node.write_policy(node_policy)
    hl7.start()
    try:
        o.start()
        with hl7.client() as c:
            assert b"MSA|AA|" in c.send_message(orm(cid="M1", accession="SICK1", pid="111"))
            assert b"MSA|AA|" in c.send_message(orm(cid="M2", accession="WELL1", pid="222"))
        uid = {i["accession"]: i["study_uid"] for i in hl7.items()}
        sick = make_study(2, patient_id="111", study_uid=uid["SICK1"])
        well = make_study(2, patient_id="222", study_uid=uid["WELL1"])
        node.store(sick)
        node.store(well)
        node.wait_processed(well)
        assert tsami.study_ids() == []                # pathology policy: nothing flagged yet
        with hl7.client() as c:
            assert b"MSA|AA|" in c.send_message(oru(cid="R1", accession="SICK1", pid="111", flag="A",
                                                    conclusion="Образование правого лёгкого."))
            assert b"MSA|AA|" in c.send_message(oru(cid="R2", accession="WELL1", pid="222"))
        wait_for(lambda: len(tsami.get(f"/studies/{sick.orthanc_id()}/instances")) == 3
                 if sick.orthanc_id() in tsami.study_ids() else False, 90,
                 message="the flagged study with its report at the TsAMI")
        wait_for(lambda: [r["state"] for r in hl7.results()] == ["attached", "attached"], 30,
                 message="both reports attached")
        node.wait_processed(well)
        assert well.orthanc_id() not in tsami.study_ids()
    finally:
        hl7.stop(signal.SIGKILL)


def test_the_mis_is_told_when_the_report_is_attached_with_the_conclusion_and_the_viewer_url(
        tmp_path, processes, make_node, backend):
    from kontur.testing.hl7 import Hl7apyMis, site_with_mis
    mis = Hl7apyMis().start()
    node = make_node(mode="all", extra_config=_modalities())
    o = node.orthanc
    site = site_with_mis(mis.port)
    hl7 = Hl7Service(tmp_path / "hl7", site=site, reports={"host": "127.0.0.1", "port": o.dicom_port,
                                                           "called_aet": o.aet},
                     notify={"viewer_url": "https://lami:443/kontur/view/{patient}/{accession}/{study}"}, **backend)
    hl7.start()
    try:
        with hl7.client() as c:
            assert b"MSA|AA|" in c.send_message(orm(cid="M1"))
            uid = hl7.items()[0]["study_uid"]
            node.store(make_study(1, patient_id="12345", study_uid=uid))
            assert b"MSA|AA|" in c.send_message(oru(cid="R1", conclusion="Образование правого лёгкого.", flag="A"))
        (m,) = wait_for(lambda: mis.received(), 60, message="the report's notification at the MIS")
        assert (m.orc.orc_5.to_er7(), m.obr.obr_25.to_er7()) == ("CM", "F")
        obx = {o.obx_2.to_er7(): o.obx_5.to_er7() for o in m.children if o.name == "OBX"}
        assert obx["TX"] == "Образование правого лёгкого."
        assert obx["RP"].split("^")[0] == f"https://lami:443/kontur/view/12345/ACC1/{uid}"
        assert obx["ST"] == "Заключение прикреплено к исследованию"
    finally:
        hl7.stop(signal.SIGKILL)
        mis.stop()


def test_the_mis_is_told_when_its_study_is_archived_here_and_when_it_is_at_the_tsami(
        tmp_path, processes, make_node, tsami, backend):
    """The node's steps of an ordered study (the plugin's outbox events, told
    to the HL7 service over its socket): archived in the LAMI, then delivered
    to the TsAMI -- each told to the MIS once, in that order."""
    from kontur.testing.hl7 import Hl7apyMis, site_with_mis
    from kontur.testing.replication import wait_delivered
    mis = Hl7apyMis().start()
    site = site_with_mis(mis.port)
    hl7 = Hl7Service(tmp_path / "hl7", site=site, events=True,
                     notify={"viewer_url": "https://lami:443/kontur/view/{patient}/{accession}/{study}"}, **backend)
    hl7.start()
    try:
        node = make_node(mode="all", worklist={"enabled": True, "db": hl7.database,
                                               "events_socket": hl7.events_socket})
        with hl7.client() as c:
            assert b"MSA|AA|" in c.send_message(orm(cid="M1"))
        uid = hl7.items()[0]["study_uid"]
        study = make_study(2, patient_id="12345", study_uid=uid)
        node.store(study)
        wait_delivered(tsami, study)
        try:
            got = wait_for(lambda: (lambda m: m if len(m) >= 2 else None)(mis.received()), 60,
                           message="both notifications at the MIS")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {_told(hl7, mis)}") from None
        words = [next(o.obx_5.to_er7() for o in m.children if o.name == "OBX" and o.obx_2.to_er7() == "ST")
                 for m in got]
        assert words == ["Исследование сохранено в ЛАМИ", "Исследование передано в ЦАМИ"], words
        assert all(m.obr.obr_3.to_er7() == "ACC1" for m in got)
        with hl7.db() as db:
            kinds = [r[0] for r in db.execute("SELECT kind FROM study_events ORDER BY at").fetchall()]
        assert kinds[0] == "archived" and "delivered" in kinds
        assert len(mis.messages) == 2                  # each once
        # the study's status on the node, by accession and by Study Instance UID (issue 12, "status online")
        st = wait_for(lambda: (lambda b: b if "notified" in [x["step"] for x in b["steps"]]
                               and "delivered" in b["notified_kinds"] else None)(_status(node.orthanc, "ACC1")), 30,
                      message="the status with the delivery notified")
        assert [x["step"] for x in st["steps"]] == ["ordered", "worklist", "archived", "delivered", "notified"]
        assert st["study_uid"] == uid and st["patient_id"] == "12345" and st["to_come"] == ["report"]
        assert st["viewer_url"] == f"https://lami:443/kontur/view/12345/ACC1/{uid}"
        assert [x["step"] for x in _status(node.orthanc, uid)["steps"]] == [x["step"] for x in st["steps"]]
        from kontur.testing.orthanc import HttpError
        for bad, code in (("NOPE1", 404), ("1'%20OR%201=1", 400), ("%3Cscript%3E", 400)):
            with pytest.raises(HttpError) as e:
                node.orthanc.get(f"/kontur/study/{bad}")
            assert e.value.status == code, (bad, e.value)
    finally:
        hl7.remove()
        mis.stop()
