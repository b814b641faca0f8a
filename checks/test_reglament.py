"""The reglament's requirements per hospital (seed 004 §5.1–5.6), read live
from the hospitals' nodes: responsible staff recorded, studies delivered to
the TsAMI within the deadline, the quarantine's summary."""
from __future__ import annotations

import json

import pytest

from remote import CREDENTIALS, as_service

control = pytest.mark.control


@control("KONTUR-REG-01", ref="reglament 004 §5.2: responsible staff with work and mobile phones", impact=0.7)
@pytest.mark.roles("lami", "gateway", "reference")
def test_responsible_staff_are_recorded(target, node):
    region = target.region
    hospitals = [k for k, h in region.hospitals.items() if h.node == node]
    missing = [k for k in hospitals if not region.hospitals[k].staff]
    assert hospitals, f"no hospital of the inventory is served by {node}"
    assert not missing, f"no responsible person recorded (inventory: hospitals.X.staff) for {', '.join(missing)}"


def _replication(host, target, node) -> dict:
    status, text = as_service(host, target.region.ports(node).http, "/kontur/replication")
    assert status == 200, f"GET /kontur/replication answered {status}"
    return json.loads(text)


@control("KONTUR-REG-02", ref="reglament 004 §5.4: studies reach the TsAMI within the deadline", impact=1.0)
@pytest.mark.roles("lami", "gateway")
def test_studies_are_delivered_within_the_deadline(host, target, node):
    rep = _replication(host, target, node)
    assert rep.get("enabled"), f"replication is disabled: {rep.get('reason')}"
    assert not rep.get("overdue"), (
        f"{rep['overdue']} study(ies) undelivered past the {rep.get('deadline_hours')} h deadline "
        f"(oldest waiting {float(rep.get('oldest_pending_age_seconds') or 0) / 3600:.1f} h; "
        f"link {'up' if (rep.get('link') or {}).get('up') else 'down'})")
    assert not rep.get("alarms"), "; ".join(rep["alarms"])


@control("KONTUR-REG-03", ref="reglament 004 §5.6: the transfer package; held studies corrected or released",
         impact=0.5)
@pytest.mark.roles("lami", "gateway")
def test_no_study_is_left_in_quarantine(host, target, node):
    transfer = _replication(host, target, node).get("transfer") or {}
    if transfer.get("mode") != "enforce":
        pytest.skip(f"the transfer package is in {transfer.get('mode') or 'no'} mode here: nothing is held back")
    held = int(transfer.get("quarantined") or 0) - int(transfer.get("released") or 0)
    reasons = ", ".join(f"{r['reason']} ({r['studies']})" for r in transfer.get("top_reasons") or [])
    assert held <= 0, f"{held} study(ies) held in quarantine (kontur quarantine list): {reasons}"


#: on an archive, as the service account: "list" its most recent studies (up to SAMPLE) older
#: than AGE seconds, or "lookup" which of the StudyInstanceUIDs in AGE it holds
_STUDIES = """python3 - <<'KONTUR'
import base64, json, sys, time, urllib.request
users = json.load(open(@CREDENTIALS@))["RegisteredUsers"]
auth = {"Authorization": "Basic " + base64.b64encode(("kontur:" + users["kontur"]).encode()).decode()}
def call(path, body=None):
    req = urllib.request.Request("http://127.0.0.1:@PORT@" + path, headers=auth, data=None if body is None else body.encode(),
                                 method="GET" if body is None else "POST")
    return json.loads(urllib.request.urlopen(req, timeout=30).read())
mode, arg = @MODE@, @ARG@
if mode == "list":
    ids = call("/studies")
    out = []
    for sid in ids[-@SAMPLE@:]:
        s = call("/studies/" + sid)
        age = time.time() - time.mktime(time.strptime(s["LastUpdate"], "%Y%m%dT%H%M%S"))
        if age > float(arg):
            out.append(s["MainDicomTags"]["StudyInstanceUID"])
    print(json.dumps({"total": len(ids), "sample": out}))
else:
    print(json.dumps({uid: any(r["Type"] == "Study" for r in call("/tools/lookup", uid)) for uid in arg}))
KONTUR"""
SAMPLE = 200


def studies_script(port: int, mode: str, arg, credentials: str = CREDENTIALS) -> str:
    return (_STUDIES.replace("@CREDENTIALS@", repr(credentials)).replace("@PORT@", str(int(port)))
            .replace("@MODE@", repr(mode)).replace("@ARG@", repr(arg)).replace("@SAMPLE@", str(SAMPLE)))


@control("KONTUR-REG-04", ref="reglament 004 §3.1, §5.4: under policy all every study of the LAMI is at the TsAMI",
         impact=1.0)
@pytest.mark.roles("lami", "gateway")
def test_the_tsami_holds_the_hospitals_studies_under_its_policy(host, target, node):
    """Read from both archives: the most recent studies of the hospital's node (up to 200) that are older
    than the delivery deadline must each be found at the TsAMI."""
    region = target.region
    spec = region.nodes[node]
    hospital = next(h for h in region.hospitals.values() if h.node == node)
    policy = "gateway" if spec.role.value == "gateway" else hospital.replication.policy.value
    if policy != "gateway" and policy != "all":
        pytest.skip(f"policy {policy}: the TsAMI holds only what was flagged or asked for (REG-02 covers its delivery)")
    age = hospital.replication.deadline_hours * 3600 + region.defaults.stable_age
    if target.min_age is not None:
        age = target.min_age
    listed = host.run(studies_script(region.ports(node).http, "list", age, target.credentials))
    assert listed.rc == 0, listed.stderr[-300:]
    here = json.loads(listed.stdout)
    if not here["sample"]:
        return
    tsami = target.host(spec.upstream)
    found = tsami.run(studies_script(region.ports(spec.upstream).http, "lookup", here["sample"], target.credentials))
    assert found.rc == 0, found.stderr[-300:]
    missing = sorted(uid for uid, held in json.loads(found.stdout).items() if not held)
    assert not missing, (f"{len(missing)} of {len(here['sample'])} studies older than "
                         f"{age / 3600:.1f} h at {node} are not at {spec.upstream}: "
                         + ", ".join(missing[:10]))
