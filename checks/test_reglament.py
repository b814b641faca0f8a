"""The reglament's requirements per hospital (seed 004 §5.1–5.6), read live
from the hospitals' nodes: responsible staff recorded, studies delivered to
the TsAMI within the deadline, the quarantine's summary."""
from __future__ import annotations

import json
import time

import pytest

from remote import CREDENTIALS, PLUGINS, as_service

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
    status, text = as_service(host, target.region.ports(node).http, "/kontur/replication",
                              credentials=target.credentials)
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
#: the start of every script that asks an archive as the service account, its password read on the node
_ASK = """python3 - <<'KONTUR'
import base64, json, sys, time, urllib.request
users = json.load(open(@CREDENTIALS@))["RegisteredUsers"]
auth = {"Authorization": "Basic " + base64.b64encode(("kontur:" + users["kontur"]).encode()).decode()}
def call(path, body=None, text=False):
    req = urllib.request.Request("http://127.0.0.1:@PORT@" + path, headers=auth, data=None if body is None else body.encode(),
                                 method="GET" if body is None else "POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        data = r.read()
    return data.decode() if text else json.loads(data)
"""


def _script(body: str, port: int, credentials: str, **values) -> str:
    """``_ASK`` and ``body`` with their @PLACEHOLDERS@ (``values``' keys, upper case) filled in."""
    text = (_ASK + body).replace("@CREDENTIALS@", repr(credentials)).replace("@PORT@", str(int(port)))
    for key, value in values.items():
        text = text.replace(f"@{key.upper()}@", value)
    return text


_STUDIES = """mode, arg = @MODE@, @ARG@
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
    return _script(_STUDIES, port, credentials, mode=repr(mode), arg=repr(arg), sample=str(SAMPLE))


@control("KONTUR-REG-04", ref="reglament 004 §3.1-3.3, §5.4: the TsAMI holds every study of the LAMI under policy "
         "all, the studies with pathology under policy pathology", impact=1.0)
@pytest.mark.roles("lami", "gateway")
def test_the_tsami_holds_the_hospitals_studies_under_its_policy(host, target, node):
    """Read from both archives.  Under ``all`` (and from a gateway): the most recent studies of the node
    (up to 200) older than the delivery deadline must each be at the TsAMI.  Under ``pathology``: every
    study flagged pathology more than the deadline ago that the node holds (the 1000 latest flags)."""
    region = target.region
    spec = region.nodes[node]
    hospital = next(h for h in region.hospitals.values() if h.node == node)
    policy = "gateway" if spec.role.value == "gateway" else hospital.replication.policy.value
    if policy not in ("gateway", "all", "pathology"):
        pytest.skip(f"policy {policy}: the TsAMI holds only what was asked for (REG-02 covers its delivery)")
    age = hospital.replication.deadline_hours * 3600 + region.defaults.stable_age
    if target.min_age is not None:
        age = target.min_age
    port = region.ports(node).http
    if policy == "pathology":
        status, text = as_service(host, port, "/kontur/flags", credentials=target.credentials)
        assert status == 200, f"GET /kontur/flags answered {status}"
        now = time.time()
        flagged = [f["study_uid"] for f in json.loads(text)["flagged"] if now - float(f["flagged_at"]) > age]
        if not flagged:
            return
        held = host.run(studies_script(port, "lookup", flagged, target.credentials))
        assert held.rc == 0, held.stderr[-300:]
        sample = [uid for uid, here in json.loads(held.stdout).items() if here]
        what = "studies flagged pathology"
    else:
        listed = host.run(studies_script(port, "list", age, target.credentials))
        assert listed.rc == 0, listed.stderr[-300:]
        sample = json.loads(listed.stdout)["sample"]
        what = "studies"
    if not sample:
        return
    tsami = target.host(spec.upstream)
    found = tsami.run(studies_script(region.ports(spec.upstream).http, "lookup", sample, target.credentials))
    assert found.rc == 0, found.stderr[-300:]
    missing = sorted(uid for uid, held in json.loads(found.stdout).items() if not held)
    assert not missing, (f"{len(missing)} of {len(sample)} {what} older than "
                         f"{age / 3600:.1f} h at {node} are not at {spec.upstream}: "
                         + ", ".join(missing[:10]))


#: on the TsAMI, as the service account: the most recent studies older than AGE (up to PACKAGE_SAMPLE of
#: them, looking at no more than 10 times as many), each judged by the transfer package's own rules
#: (kontur's plugin modules on the node) with its hospital's settings (by Issuer of Patient ID).  Prints
#: each study's UID, issuer, state and reasons -- no name, birth date or other tag value of a patient's.
_PACKAGE = """sys.path.insert(0, @PLUGINS@)
from kontur_plugins.transfer.config import parse_transfer
from kontur_plugins.transfer.rules import Series, StudyFacts, evaluate
kinds = [parse_transfer({"transfer": {"enabled": True, "validation": v}}).validation for v in @SETTINGS@]
settings = {issuer: kinds[k] for issuer, k in @ISSUERS@.items()}
age, want = float(@AGE@), int(@SAMPLE@)
ids = call("/studies")
out, looked = [], 0
for sid in reversed(ids):
    if len(out) >= want or looked >= 10 * want:
        break
    looked += 1
    s = call("/studies/" + sid)
    if time.time() - time.mktime(time.strptime(s["LastUpdate"], "%Y%m%dT%H%M%S")) <= age:
        continue
    series = []
    for se in sorted(call("/studies/" + sid + "/series"), key=lambda x: x["ID"]):
        if se.get("Instances"):
            first = sorted(se["Instances"])[0]
            try:
                ts = call("/instances/" + first + "/metadata/TransferSyntax", text=True)
            except Exception:
                ts = None
            series.append(Series(call("/instances/" + first + "/simplified-tags"), ts))
    facts = StudyFacts(series)
    issuer = str(facts.first.get("IssuerOfPatientID") or "")
    v = evaluate(facts, settings.get(issuer) or settings[""])
    out.append({"study_uid": s["MainDicomTags"].get("StudyInstanceUID"), "issuer": issuer, "state": v.state,
                "reasons": list(v.reasons) + list(v.notes)})
print(json.dumps({"total": len(ids), "looked": looked, "checked": out}, ensure_ascii=False))
KONTUR"""
PACKAGE_SAMPLE = 20


def package_script(port: int, age: float, settings: dict, credentials: str = CREDENTIALS,
                   plugins: str = PLUGINS) -> str:
    """``settings``: issuer ("" for any other) -> its validation section; each distinct one is sent once."""
    kinds: list[dict] = []
    issuers = {}
    for issuer, v in settings.items():
        if v not in kinds:
            kinds.append(v)
        issuers[issuer] = kinds.index(v)
    return _script(_PACKAGE, port, credentials, plugins=repr(plugins), settings=repr(kinds), issuers=repr(issuers),
                   age=repr(float(age)), sample=str(PACKAGE_SAMPLE))


@control("KONTUR-REG-05", ref="reglament 004 §5.6: the package sent to the TsAMI carries images in original "
         "quality, the patient's data, the physician's and the procedure's codes, protocol and conclusion",
         impact=0.7)
@pytest.mark.roles("tsami")
def test_a_sample_of_tsami_studies_carries_the_whole_package(host, target, node):
    """The TsAMI's most recent studies (up to 20) older than the longest delivery deadline, each judged by
    the rules the hospitals' nodes apply before sending (their inventory settings), the report included:
    past the deadline a study without its protocol and conclusion is a finding too."""
    from kontur.policy import validation_section
    region = target.region
    settings = {region.issuer_of(k): validation_section(region, k) for k, h in region.hospitals.items() if h.node}
    settings[""] = validation_section(region, None)      # a study whose issuer is no hospital's
    age = max((h.replication.deadline_hours for h in region.hospitals.values()), default=24) * 3600 \
        + region.defaults.stable_age
    if target.min_age is not None:
        age = target.min_age
    run = host.run(package_script(region.ports(node).http, age, settings, target.credentials, target.plugins))
    assert run.rc == 0, run.stderr[-300:]
    answer = json.loads(run.stdout)
    short = [c for c in answer["checked"] if c["state"] != "valid"]
    hospital_of = {region.issuer_of(k): k for k in region.hospitals}
    assert not short, (f"{len(short)} of {len(answer['checked'])} sampled studies older than {age / 3600:.1f} h "
                       f"lack parts of the package: " + "; ".join(
                           f"{c['study_uid']} ({hospital_of.get(c['issuer'], c['issuer'] or 'no issuer')}): "
                           + ", ".join(c["reasons"]) for c in short[:5]))
