"""The Modality Worklist (issue 11): an order from the MIS, through the HL7
service, answered by Orthanc's DICOM server with kontur's plugin -- asked by
DCMTK ``findscu -W`` as the devices ask."""
from __future__ import annotations

import json
import signal

import pytest

from kontur.testing.dicom import findscu_worklist
from kontur.testing.hl7 import Hl7Service, orm
from kontur.testing.orthanc import OrthancProcess
from kontur.testing.replication import make_policy, node_config

pytestmark = pytest.mark.orthanc
DEVICES = {"ONCO_CT1": 11201, "ONCO_CT2": 11202, "ONCO_MR1": 11203}


@pytest.fixture
def region(tmp_path, processes, backend):
    hl7 = Hl7Service(tmp_path / "hl7", **backend)
    hl7.start()
    policy = make_policy("http://127.0.0.1:9/", tmp_path / "lami-state")
    policy["worklist"] = {"enabled": True, "db": hl7.database}
    pp = tmp_path / "policy.json"
    pp.write_text(json.dumps(policy))
    cfg = node_config(pp, stable_age=3600)
    # the renderer's least privilege: a modality stores, echoes and asks for its worklist, nothing else
    cfg["DicomModalities"].update({aet.lower(): {"AET": aet, "Host": "127.0.0.1", "Port": port,
                                                 "AllowEcho": True, "AllowStore": True, "AllowFind": False,
                                                 "AllowFindWorklist": True, "AllowMove": False, "AllowGet": False}
                                   for aet, port in DEVICES.items()})
    cfg.update({"DicomAlwaysAllowFind": False, "DicomAlwaysAllowFindWorklist": False, "DicomCheckModalityHost": True})
    lami = OrthancProcess("lami", cfg, tmp_path / "lami", aet="ONCO_LAMI")
    processes.append(lami)
    lami.start()
    yield hl7, lami
    hl7.stop(signal.SIGKILL)


def ask(tmp_path, lami, aet):
    res, answers = findscu_worklist(tmp_path / f"find-{aet}", port=lami.dicom_port, called_aet=lami.aet,
                                    calling_aet=aet)
    return res, answers


def test_an_order_is_on_the_worklist_of_its_devices_with_its_cyrillic_name(region, tmp_path):
    hl7, lami = region
    with hl7.client() as c:
        assert b"MSA|AA|" in c.send_message(orm(cid="M1"))
    for aet in ("ONCO_CT1", "ONCO_CT2"):
        res, answers = ask(tmp_path, lami, aet)
        assert res.returncode == 0, res.stderr
        assert len(answers) == 1, res.stderr
        a = answers[0]
        assert str(a.PatientName) == "Иванов^Пётр^Ильич" and a.PatientID == "12345"
        assert a.AccessionNumber == "ACC1" and a.ScheduledProcedureStepSequence[0].ScheduledStationAETitle == aet
        assert a.RequestedProcedureDescription == "Компьютерная томография органов грудной полости"
    res, answers = ask(tmp_path, lami, "ONCO_MR1")          # another modality type: not its order
    assert res.returncode == 0 and answers == []


def test_a_cancel_takes_the_item_off_the_worklist(region, tmp_path):
    hl7, lami = region
    with hl7.client() as c:
        c.send_message(orm(cid="M1"))
        assert len(ask(tmp_path, lami, "ONCO_CT1")[1]) == 1
        assert b"MSA|AA|" in c.send_message(orm("CA", cid="M2"))
    assert ask(tmp_path, lami, "ONCO_CT1")[1] == []


def test_a_query_keys_narrow_the_answer(region, tmp_path):
    hl7, lami = region
    with hl7.client() as c:
        c.send_message(orm(cid="M1", accession="A1", pid="111", name="Иванов^Пётр"))
        c.send_message(orm(cid="M2", accession="A2", pid="222", name="Сидорова^Мария"))
    res, answers = findscu_worklist(tmp_path / "f", port=lami.dicom_port, called_aet=lami.aet,
                                    calling_aet="ONCO_CT1", keys=["PatientName=Сидорова*", "AccessionNumber",
                                                                  "SpecificCharacterSet=ISO_IR 192"])
    assert res.returncode == 0, res.stderr
    assert [a.AccessionNumber for a in answers] == ["A2"]


def test_a_device_not_in_the_inventory_gets_no_worklist(region, tmp_path):
    hl7, lami = region
    with hl7.client() as c:
        c.send_message(orm(cid="M1"))
    res, answers = ask(tmp_path, lami, "XRAY9")
    # Orthanc refuses an AE title its DicomModalities does not list (findscu still exits 0)
    assert answers == [] and ("Peer aborted Association" in res.stderr or "Association Rejected" in res.stderr)


def _names_of_patients_studies(o: OrthancProcess, patient_id: str) -> list[str]:
    """The patient name of each study of ``patient_id`` (one entry per study)."""
    found = o.post("/tools/find", {"Level": "Study", "Query": {"PatientID": patient_id}, "Expand": True})
    return sorted(s["PatientMainDicomTags"].get("PatientName", "") for s in found)


@pytest.fixture
def ingest_lami(tmp_path, processes, make_node, backend):
    """The HL7 service and a LAMI with the ingest stage on (issuer 42-ONCO), as on every deployed LAMI:
    Orthanc's modify stores the new instances through the plugin's received-instance callback, so the
    plugin must not hold the interpreter while it waits."""
    from kontur.testing.hl7 import SITE
    site = json.loads(json.dumps(SITE))
    site["hospitals"][0]["issuer"] = "42-ONCO"
    hl7 = Hl7Service(tmp_path / "hl7", site=site, **backend)
    hl7.start()
    try:
        yield hl7, make_node(mode="all", worklist={"enabled": True, "db": hl7.database},
                             transfer={"enabled": True, "repair_text": True, "issuer": "42-ONCO"})
    finally:
        hl7.stop(signal.SIGKILL)


def test_an_adt_update_renames_the_stored_study_here_and_at_the_tsami(ingest_lami, tsami):
    """ADT^A08 for a patient whose study is stored and already at the TsAMI:
    Orthanc's modify here (by the plugin, audited), and through the correction
    path one copy at the TsAMI, under the new name (the old one retired)."""
    from kontur.testing.dicom import make_study
    from kontur.testing.orthanc import wait_for
    from kontur.testing.replication import wait_delivered

    hl7, node = ingest_lami
    study = make_study(3, patient_id="12345", patient_name="Иванов^Пётр^Ильич")
    node.store(study)
    wait_delivered(tsami, study)
    a08 = "\r".join(["MSH|^~\\&|MIS|ONCO|KONTUR|LAMI|20261201120500||ADT^A08|U1|P|2.5||||||UNICODE UTF-8",
                     "PID|1||12345^^^ONCO||Петров^Пётр^Ильич||19700101|M"]) + "\r"
    with hl7.client() as c:
        assert b"MSA|AA|U1" in c.send_message(a08)
    # Orthanc 1.10's modify copies the study (new UIDs) and deletes the source
    wait_for(lambda: _names_of_patients_studies(node.orthanc, "12345") == ["Петров^Пётр^Ильич"], 60,
             message="the stored study renamed here")
    # the TsAMI ends with one copy, under the new name: the old one retired by the correction path
    wait_for(lambda: _names_of_patients_studies(tsami, "12345") == ["Петров^Пётр^Ильич"], 180,
             message="the TsAMI's copy superseded by the renamed study")
    assert len(tsami.get("/studies")) == 1
    assert node.status()["adt"]["applied_through"] == 1


def test_an_adt_merge_moves_the_stored_study_to_the_surviving_patient_here_and_at_the_tsami(ingest_lami, tsami):
    """ADT^A40: the MIS merges record 999 into 12345.  The study stored under
    999 (and already at the TsAMI) is moved to 12345 by Orthanc's modify here,
    and the TsAMI ends with one copy, under 12345, none left under 999."""
    from kontur.testing.dicom import make_study
    from kontur.testing.orthanc import wait_for
    from kontur.testing.replication import wait_delivered

    hl7, node = ingest_lami
    study = make_study(2, patient_id="999", patient_name="Иванов^Пётр^Ильич")
    node.store(study)
    wait_delivered(tsami, study)
    a40 = "\r".join(["MSH|^~\\&|MIS|ONCO|KONTUR|LAMI|20261201121000||ADT^A40^ADT_A39|G1|P|2.5||||||UNICODE UTF-8",
                     "PID|1||12345^^^ONCO||Иванов^Пётр^Ильич||19700101|M", "MRG|999^^^ONCO"]) + "\r"
    with hl7.client() as c:
        assert b"MSA|AA|G1" in c.send_message(a40)
    wait_for(lambda: (_names_of_patients_studies(node.orthanc, "12345"),
                      _names_of_patients_studies(node.orthanc, "999")) == (["Иванов^Пётр^Ильич"], []), 60,
             message="the stored study under the surviving patient here")
    wait_for(lambda: (_names_of_patients_studies(tsami, "12345"), _names_of_patients_studies(tsami, "999"))
             == (["Иванов^Пётр^Ильич"], []), 180, message="the TsAMI's copy moved to the surviving patient")
    assert len(tsami.get("/studies")) == 1


def test_an_item_whose_study_is_stored_leaves_the_worklist(region, tmp_path):
    """A device without MPPS: the study it made from the item (the item's
    Study Instance UID) arriving here is what takes the item off."""
    from kontur.testing.dicom import make_study, send_study
    hl7, lami = region
    with hl7.client() as c:
        c.send_message(orm(cid="M1"))
    item = ask(tmp_path, lami, "ONCO_CT1")[1][0]
    study = make_study(2, patient_id=item.PatientID, study_uid=item.StudyInstanceUID,
                       patient_name=str(item.PatientName))
    send_study(study, tmp_path / "files", port=lami.dicom_port, called_aet=lami.aet, calling_aet="ONCO_CT1")
    assert ask(tmp_path, lami, "ONCO_CT1")[1] == []
    assert ask(tmp_path, lami, "ONCO_CT2")[1] == []       # the other CT's copy of the order too


def test_a_stat_order_sends_its_study_in_the_urgent_lane_under_every_policy(tmp_path, processes, make_node, tsami,
                                                                            backend):
    """An order the MIS marks STAT (TQ1-9 / ORC-7.6 "S"): its study goes upstream
    at once, outside the node's transfer window and under the pathology policy;
    a routine one waits."""
    import datetime as dt
    import zoneinfo

    from kontur.testing.dicom import make_study
    from kontur.testing.replication import TZ, wait_delivered

    now = dt.datetime.now(zoneinfo.ZoneInfo(TZ))
    start = (now + dt.timedelta(hours=2)).replace(second=0, microsecond=0)
    closed = f"{start:%H:%M}-{start + dt.timedelta(hours=1):%H:%M}"
    hl7 = Hl7Service(tmp_path / "hl7", **backend)
    hl7.start()
    try:
        node = make_node(mode="pathology", windows=[closed], worklist={"enabled": True, "db": hl7.database})
        stat = orm(cid="M1", accession="STAT1", pid="111").replace("ORC|NW|P-STAT1|STAT1",
                                                                   "ORC|NW|P-STAT1|STAT1||||^^^^^S")
        with hl7.client() as c:
            assert b"MSA|AA|" in c.send_message(stat)
            assert b"MSA|AA|" in c.send_message(orm(cid="M2", accession="ROUT1", pid="222"))
        uid = {i["accession"]: i["study_uid"] for i in hl7.items()}
        urgent = make_study(2, patient_id="111", study_uid=uid["STAT1"])
        routine = make_study(2, patient_id="222", study_uid=uid["ROUT1"])
        node.store(routine)
        node.store(urgent)
        wait_delivered(tsami, urgent)
        node.wait_processed(routine)
        assert routine.orthanc_id() not in tsami.study_ids()
        st = node.status()
        assert st["window_open"] is False
    finally:
        hl7.stop(signal.SIGKILL)


def test_a_study_its_device_reported_completed_goes_upstream_without_waiting_its_quiet_period(
        tmp_path, processes, make_node, tsami, backend):
    """MPPS COMPLETED from the device (pynetdicom's SCU, to the HL7 service)
    calls its study complete: it goes to the TsAMI a few seconds after its
    last instance, though the node's StableAge is an hour; a study whose
    device reported nothing waits its quiet period."""
    from kontur.testing import mpps_scu
    from kontur.testing.dicom import make_study
    from kontur.testing.hl7 import MPPS_AET
    from kontur.testing.replication import wait_delivered

    hl7 = Hl7Service(tmp_path / "hl7", mpps=True, **backend)
    hl7.start()
    try:
        node = make_node(mode="all", stable_age=3600, worklist={"enabled": True, "db": hl7.database})
        with hl7.client() as c:
            assert b"MSA|AA|" in c.send_message(orm(cid="M1", accession="DONE1", pid="111"))
            assert b"MSA|AA|" in c.send_message(orm(cid="M2", accession="OPEN1", pid="222"))
        uid = {i["accession"]: i["study_uid"] for i in hl7.items()}
        scu = ["ONCO_CT1", MPPS_AET, "127.0.0.1", str(hl7.mpps_port)]
        status, sop = mpps_scu.run(*scu, "create", "DONE1", "IN PROGRESS")
        assert status == 0x0000
        assert mpps_scu.run(*scu, "set", sop, "COMPLETED")[0] == 0x0000
        done = make_study(2, patient_id="111", study_uid=uid["DONE1"])
        still_open = make_study(2, patient_id="222", study_uid=uid["OPEN1"])
        node.store(still_open)
        node.store(done)
        wait_delivered(tsami, done)
        assert still_open.orthanc_id() not in tsami.study_ids()
        row = node.status()
        assert row["awaiting_stable"] == 1, row            # the other one still waits its hour
    finally:
        hl7.stop(signal.SIGKILL)
