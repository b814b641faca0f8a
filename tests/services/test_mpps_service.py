"""MPPS (issue 11): the HL7 service's SCP (pynetdicom 2.0, the wheel kontur
ships to nodes, under Debian's python3) asked by pynetdicom's SCU as a device
asks (``kontur.testing.mpps_scu``, a process of its own): N-CREATE IN
PROGRESS, N-SET COMPLETED / DISCONTINUED."""
from __future__ import annotations

import signal

import pytest
from pydicom.uid import generate_uid

from kontur.testing import mpps_scu
from kontur.testing.hl7 import MPPS_AET, Hl7Service, orm


@pytest.fixture
def service(tmp_path, backend):
    s = Hl7Service(tmp_path, mpps=True, **backend)
    s.start()
    yield s
    s.stop(signal.SIGKILL)


def create(svc, aet, accession, *, status="IN PROGRESS", sop=None, bind=None) -> tuple[int | None, str]:
    args = [aet, MPPS_AET, "127.0.0.1", str(svc.mpps_port), "create", accession, status]
    if sop:
        args.append(sop)
    if bind:
        args += ["--bind", bind]
    return mpps_scu.run(*args)


def set_status(svc, aet, sop, status) -> int | None:
    return mpps_scu.run(aet, MPPS_AET, "127.0.0.1", str(svc.mpps_port), "set", sop, status)[0]


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
    assert create(service, "XRAY9", "ACC1")[0] is None                              # unknown AE title: refused
    order(service)
    # ONCO_CT1 is at 127.0.0.1 in the inventory; the same AE title from another address is refused
    assert create(service, "ONCO_CT1", "ACC1", bind="127.0.0.2")[0] == 0x0110
    assert statuses(service)["ONCO_CT1"] == "SCHEDULED"
