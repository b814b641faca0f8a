"""MPPS (issue 11): the HL7 service's SCP (pynetdicom 2.0, the wheel kontur
ships to nodes, under Debian's python3) asked by pynetdicom's SCU as a device
asks: N-CREATE IN PROGRESS, N-SET COMPLETED / DISCONTINUED."""
from __future__ import annotations

import signal

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep as MPPS

from kontur.testing.hl7 import MPPS_AET, Hl7Service, orm


@pytest.fixture
def service(tmp_path):
    s = Hl7Service(tmp_path, mpps=True)
    s.start()
    yield s
    s.stop(signal.SIGKILL)


def associate(svc, aet, bind=None):
    ae = AE(ae_title=aet)
    ae.add_requested_context(MPPS)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae.associate("127.0.0.1", svc.mpps_port, ae_title=MPPS_AET, bind_address=bind or ("127.0.0.1", 0))


def create(svc, aet, accession, *, status="IN PROGRESS", sop=None, bind=None) -> tuple[int, str]:
    assoc = associate(svc, aet, bind)
    assert assoc.is_established, f"association from {aet} refused"
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.Modality = "CT"
    ds.PerformedStationAETitle = aet
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepStartDate, ds.PerformedProcedureStepStartTime = "20261201", "130000"
    ssa = Dataset()
    ssa.AccessionNumber = accession
    ssa.StudyInstanceUID = generate_uid()
    ds.ScheduledStepAttributesSequence = [ssa]
    sop = sop or generate_uid()
    try:
        st, _ = assoc.send_n_create(ds, MPPS, sop)
    finally:
        assoc.release()
    return int(st.Status), sop


def set_status(svc, aet, sop, status) -> int:
    assoc = associate(svc, aet)
    assert assoc.is_established
    mod = Dataset()
    mod.PerformedProcedureStepStatus = status
    mod.PerformedProcedureStepEndDate, mod.PerformedProcedureStepEndTime = "20261201", "131500"
    try:
        st, _ = assoc.send_n_set(mod, MPPS, sop)
    finally:
        assoc.release()
    return int(st.Status)


def statuses(svc) -> dict[str, str]:
    return {i["aet"]: i["status"] for i in svc.items()}


def order(svc, **kw):
    with svc.client() as c:
        assert b"MSA|AA|" in c.send_message(orm(cid=kw.pop("cid", "M1"), **kw))


def test_in_progress_takes_the_order_off_the_other_devices_and_completed_off_all(service):
    order(service)
    status, sop = create(service, "ONCO_CT1", "ACC1")
    assert status == 0x0000
    assert statuses(service) == {"ONCO_CT1": "IN PROGRESS", "ONCO_CT2": "TAKEN"}
    assert set_status(service, "ONCO_CT1", sop, "COMPLETED") == 0x0000
    assert statuses(service) == {"ONCO_CT1": "COMPLETED", "ONCO_CT2": "COMPLETED"}
    service.stop(signal.SIGKILL)                # the state is durable
    service.start()
    with service.db() as db:
        row = db.execute("SELECT status, linked FROM mpps WHERE sop_uid=?", (sop,)).fetchone()
    assert tuple(row) == ("COMPLETED", 1)
    assert set_status(service, "ONCO_CT1", sop, "DISCONTINUED") == 0x0110      # final is final


def test_discontinued_offers_the_order_again(service):
    order(service)
    _, sop = create(service, "ONCO_CT2", "ACC1")
    assert set_status(service, "ONCO_CT2", sop, "DISCONTINUED") == 0x0000
    assert statuses(service) == {"ONCO_CT1": "SCHEDULED", "ONCO_CT2": "SCHEDULED"}


def test_bad_requests_get_their_dimse_status(service):
    order(service)
    assert create(service, "ONCO_CT1", "ACC1", status="COMPLETED")[0] == 0x0106     # must start IN PROGRESS
    status, sop = create(service, "ONCO_CT1", "ACC1")
    assert create(service, "ONCO_CT1", "ACC1", sop=sop)[0] == 0x0111                 # duplicate instance
    assert set_status(service, "ONCO_CT1", generate_uid(), "COMPLETED") == 0x0112    # no such instance
    assert set_status(service, "ONCO_CT2", sop, "COMPLETED") == 0x0110               # not its step
    assert set_status(service, "ONCO_CT1", sop, "FINISHED") == 0x0106


def test_an_unscheduled_procedure_is_kept_unlinked(service):
    status, sop = create(service, "ONCO_MR1", "WALK-IN")
    assert status == 0x0000
    with service.db() as db:
        assert tuple(db.execute("SELECT status, linked FROM mpps WHERE sop_uid=?", (sop,)).fetchone()) == \
            ("IN PROGRESS", 0)


def test_only_the_inventorys_devices_from_their_addresses(service):
    assert not associate(service, "XRAY9").is_established                          # unknown AE title
    order(service)
    # ONCO_CT1 is at 127.0.0.1 in the inventory; the same AE title from another address is refused
    assert create(service, "ONCO_CT1", "ACC1", bind=("127.0.0.2", 0))[0] == 0x0110
    assert statuses(service)["ONCO_CT1"] == "SCHEDULED"
