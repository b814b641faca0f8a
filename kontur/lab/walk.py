"""``kontur lab walk``: one study along the reglament's path in the running,
deployed lab (004 §2.2; issue 12), each step printed with its time:

the hospital's MIS orders it (HL7 ORM from the MIS's namespace) -> the CT
finds it on its worklist (DCMTK ``findscu -W`` from the CT's namespace) ->
MPPS IN PROGRESS -> the images (DCMTK ``storescu``, under the worklist's
Study Instance UID) -> MPPS COMPLETED -> the result with its conclusion and
a pathology flag (HL7 ORU from the MIS) -> then, as the node tells it
(``GET /kontur/study/ACCESSION``): archived in the LAMI, validated, report
attached, delivered to the TsAMI, the MIS notified -- and the viewer URL the
MIS got.  Real peers throughout; nothing is faked on the nodes.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidInput, OperationFailed
from .state import LabState, lab_region, require_state

_MIS_SEND = """
import sys, hl7.client
host, port = sys.argv[1], int(sys.argv[2])
with hl7.client.MLLPClient(host, port) as c:
    print(c.send_message(sys.stdin.read()).decode("utf-8", "replace").replace("\\r", " | "))
"""


def _pick(region, hospital: str | None) -> str:
    with_mis = [hk for hk, h in region.hospitals.items() if h.mis and h.node
                and region.nodes[h.node].role.value == "lami"
                and any(m.modality == "CT" for m in h.modalities)]
    if hospital:
        if hospital not in with_mis:
            raise InvalidInput(f"hospital {hospital!r} cannot walk a study: it needs a MIS, a LAMI and a CT; "
                               f"those that can: {', '.join(with_mis) or 'none'}")
        return hospital
    if not with_mis:
        raise InvalidInput("no hospital of the lab's region has a MIS, a LAMI and a CT")
    # the pathology policy shows the most (the result decides what goes to the TsAMI)
    return next((hk for hk in with_mis if region.hospitals[hk].replication
                 and region.hospitals[hk].replication.policy.value == "pathology"), with_mis[0])


def walk(hospital: str | None = None, *, emit: Callable[[str], None] = print, timeout: float = 300) -> dict:
    """Walk one study; returns the node's final status answer."""
    from .. import nodeapi
    from ..inventory import load
    from ..testing.dicom import findscu_worklist, make_study
    from ..testing.hl7 import orm, oru
    from ..testing import mpps_scu

    state: LabState = require_state()
    inventory = load(Path(state.inventory))
    region = lab_region(inventory, state)
    hk = _pick(region, hospital)
    h = region.hospitals[hk]
    node = h.node
    spec, ports = region.nodes[node], region.ports(node)
    ct = next(m for m in h.modalities if m.modality == "CT")
    facility = h.mis.facility or hk.upper()
    ns_ct, ns_mis = state.modalities[ct.aet].netns, state.mis[hk].netns
    stamp = dt.datetime.now().strftime("%H%M%S")
    accession, pid = f"W{stamp}", f"W-{stamp}"
    t0 = time.monotonic()

    def step(text: str) -> None:
        emit(f"{time.monotonic() - t0:7.1f} s  {text}")

    def mis_send(message: str) -> str:
        p = subprocess.run(["ip", "netns", "exec", ns_mis, sys.executable, "-c", _MIS_SEND, spec.address,
                            str(ports.hl7)], input=message, text=True, capture_output=True, timeout=60)
        if p.returncode != 0:
            raise OperationFailed(f"the MIS of {hk} could not send: {p.stderr.strip()[-400:]}")
        return p.stdout.strip()

    emit(f"one study along the reglament's path: {h.title} ({hk}), its MIS, {ct.aet}, {node}")
    ack = mis_send(orm(cid=f"WALK-{stamp}-1", accession=accession, pid=pid, facility=facility,
                       name="Тестова^Анна^Сергеевна"))
    if "MSA|AA|" not in ack:
        raise OperationFailed(f"the node refused the order: {ack}")
    step(f"the MIS ordered it: ORM^O01, accession {accession}, patient {pid}: AA")
    with tempfile.TemporaryDirectory(prefix="kontur-walk-") as tmp:
        found = []
        for _ in range(50):
            res, found = findscu_worklist(Path(tmp) / "wl", port=ports.dicom, called_aet=spec.aet,
                                          calling_aet=ct.aet, host=spec.address, netns=ns_ct)
            found = [a for a in found if a.AccessionNumber == accession]
            if found:
                break
            time.sleep(0.2)
        if not found:
            raise OperationFailed(f"{ct.aet} does not find the order on its worklist")
        item = found[0]
        step(f"{ct.aet} found it on its worklist (findscu -W): {item.PatientName}, "
             f"{item.RequestedProcedureDescription}")
        mpps = [ct.aet, spec.aet, spec.address, str(ports.mpps)]
        prefix = ["ip", "netns", "exec", ns_ct]
        status, sop = mpps_scu.run(*mpps, "create", accession, "IN PROGRESS", prefix=prefix)
        if status != 0:
            raise OperationFailed(f"MPPS IN PROGRESS refused: {status}")
        step("MPPS IN PROGRESS from the CT")
        study = make_study(3, patient_id=pid, patient_name=str(item.PatientName), study_uid=item.StudyInstanceUID,
                           accession=accession)
        files = []
        for n, inst in enumerate(study.instances):
            f = Path(tmp) / f"{n}.dcm"
            f.write_bytes(inst.data)
            files.append(str(f))
        env = dict(os.environ, TCP_NODELAY="1")
        p = subprocess.run(["ip", "netns", "exec", ns_ct, "storescu", "-aet", ct.aet, "-aec", spec.aet,
                            spec.address, str(ports.dicom), *files], capture_output=True, text=True, env=env,
                           timeout=120)
        if p.returncode != 0:
            raise OperationFailed(f"storescu from {ct.aet} failed: {p.stderr.strip()[-400:]}")
        step(f"the CT stored {len(files)} images on {node} (storescu)")
        if mpps_scu.run(*mpps, "set", sop, "COMPLETED", prefix=prefix)[0] != 0:
            raise OperationFailed("MPPS COMPLETED refused")
        step("MPPS COMPLETED from the CT")
    ack = mis_send(oru(cid=f"WALK-{stamp}-2", accession=accession, pid=pid, facility=facility, flag="A",
                       findings="В S2 правого лёгкого очаг 14 мм с неровным контуром; лимфоузлы не увеличены.",
                       conclusion="Очаговое образование правого лёгкого; рекомендована консультация онколога."))
    step(f"the MIS sent the result: ORU^R01 with the conclusion, abnormal flag A: {ack.split('|')[5] if '|' in ack else ack}")
    client = nodeapi.client_for(inventory, node, lab=True)
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    body: dict = {}
    want = {"archived", "report", "delivered", "notified"}
    while time.monotonic() < deadline:
        try:
            body = client.get(f"kontur/study/{accession}")
        except nodeapi.NodeError:
            body = {}
        for s in body.get("steps", []):
            key = (s["step"], s.get("detail"))
            if s["step"] in ("ordered", "worklist", "started", "completed") or str(key) in seen:
                continue
            seen.add(str(key))
            step(f"{node}: {s['what']} at {s['at']}" + (f" ({s['detail']})" if s.get("detail") else ""))
        reached = {s["step"] for s in body.get("steps", [])}
        notified = next((s["detail"] for s in body.get("steps", []) if s["step"] == "notified"), "")
        if want <= reached and "delivered" in notified:
            break
        time.sleep(1)
    else:
        raise OperationFailed(f"the study did not finish its path in {timeout:.0f} s; so far: "
                              + ", ".join(s["step"] for s in body.get("steps", [])))
    emit(f"the MIS keeps this link to open the study: {body.get('viewer_url')}")
    return body
