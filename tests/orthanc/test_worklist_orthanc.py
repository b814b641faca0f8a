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
def region(tmp_path, processes):
    hl7 = Hl7Service(tmp_path / "hl7")
    hl7.start()
    policy = make_policy("http://127.0.0.1:9/", tmp_path / "lami-state")
    policy["worklist"] = {"enabled": True, "db": str(hl7.db_path)}
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
