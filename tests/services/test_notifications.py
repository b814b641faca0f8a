"""Notifications to the MIS (issue 12): the HL7 service tells the hospital's
MIS what happened to an order's study, with its viewer URL, from a durable
queue.  The MIS is hl7apy's MLLP server (a library the service does not use);
MPPS comes from pynetdicom's SCU as the device."""
from __future__ import annotations

import signal

import pytest

from kontur.testing import mpps_scu
from kontur.testing.hl7 import MPPS_AET, Hl7apyMis, Hl7Service, orm, site_with_mis
from kontur.testing.orthanc import wait_for

VIEWER = "https://10.42.1.10:443/kontur/view/{patient}/{accession}/{study}"


@pytest.fixture
def mis():
    m = Hl7apyMis().start()
    yield m
    m.stop()


def _service(tmp_path, mis, backend):
    site = site_with_mis(mis.port)
    return Hl7Service(tmp_path, site=site, mpps=True, notify={"viewer_url": VIEWER}, **backend)


def _start(svc, accession):
    status, sop = mpps_scu.run("ONCO_CT1", MPPS_AET, "127.0.0.1", str(svc.mpps_port), "create", accession,
                               "IN PROGRESS")
    assert status == 0x0000
    return sop


def test_a_started_study_is_told_to_the_mis_with_its_viewer_url(tmp_path, mis, backend):
    svc = _service(tmp_path, mis, backend)
    svc.start()
    try:
        with svc.client() as c:
            assert b"MSA|AA|" in c.send_message(orm(cid="M1", accession="ACC1"))
        _start(svc, "ACC1")
        (m,) = wait_for(lambda: mis.received(), 30, message="the notification at the MIS")
        assert m.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
        assert m.orc.orc_5.to_er7() == "IP" and m.obr.obr_3.to_er7() == "ACC1" and m.obr.obr_25.to_er7() == "I"
        assert m.pid.pid_3.to_er7().startswith("12345") and "Иванов" in m.pid.pid_5.to_er7()
        obx = {o.obx_2.to_er7(): o for o in m.children if o.name == "OBX"}
        assert obx["ST"].obx_5.to_er7() == "Исследование начато"
        uid = svc.items()[0]["study_uid"]
        assert obx["RP"].obx_5.to_er7().split("^")[0] == f"https://10.42.1.10:443/kontur/view/12345/ACC1/{uid}"
        assert [n["state"] for n in svc.notifications()] == ["sent"]
    finally:
        svc.stop(signal.SIGKILL)


def test_a_mis_down_for_a_while_gets_every_notification_afterwards_in_order_once(tmp_path, mis, backend):
    """The MIS is down; three studies start; the service is killed (-9) and
    started again meanwhile; the MIS comes back on its port: it gets the
    three, in the order they happened, each once."""
    svc = _service(tmp_path, mis, backend)
    svc.start()
    try:
        mis.stop()
        with svc.client() as c:
            for n in (1, 2, 3):
                assert b"MSA|AA|" in c.send_message(orm(cid=f"M{n}", accession=f"ACC{n}", pid=f"{n}00"))
        for n in (1, 2, 3):
            _start(svc, f"ACC{n}")
        wait_for(lambda: all(n["attempts"] >= 1 for n in svc.notifications()[:1]), 30,
                 message="a try that found the MIS down")
        assert [n["state"] for n in svc.notifications()] == ["pending"] * 3
        svc.stop(signal.SIGKILL)
        svc.start()
        mis.start()                                 # back, on the same port
        wait_for(lambda: len(mis.messages) >= 3 and all(n["state"] == "sent" for n in svc.notifications()), 60,
                 message="the three notifications delivered")
        got = [m.obr.obr_3.to_er7() for m in mis.received()]
        assert got == ["ACC1", "ACC2", "ACC3"], got
        controls = [m.msh.msh_10.to_er7() for m in mis.received()]
        assert len(set(controls)) == 3
        assert "cannot be reached" in svc.log.read_text()
    finally:
        svc.stop(signal.SIGKILL)


def test_a_notification_the_mis_refuses_is_kept_with_its_reason_and_the_next_goes(tmp_path, mis, backend):
    mis.refuse = {"ACC1"}
    svc = _service(tmp_path, mis, backend)
    svc.start()
    try:
        with svc.client() as c:
            c.send_message(orm(cid="M1", accession="ACC1"))
            c.send_message(orm(cid="M2", accession="ACC2", pid="200"))
        _start(svc, "ACC1")
        _start(svc, "ACC2")
        wait_for(lambda: [n["state"] for n in svc.notifications()] == ["refused", "sent"], 30,
                 message="the refused one kept, the next sent")
        first = svc.notifications()[0]
        assert first["ack_code"] == "AR" and "refused by the test" in first["last_error"]
    finally:
        svc.stop(signal.SIGKILL)
