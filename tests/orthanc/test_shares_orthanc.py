"""Double reading and second opinion on the TsAMI (issue 12, seed 002), in
Debian's Orthanc with kontur's plugin, the inventory's users and roles and
roles.lua: a hospital's radiologist opens their hospital's studies through
the viewer link and nothing else there; a study shared with their hospital
opens for the share's time, audited; a revoked share closes it again; bad
share requests are refused with what was expected."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest

from kontur.inventory import load
from kontur.policy import build_policy
from kontur.render.orthanc import SERVICE_USER, roles_table
from kontur.testing.dicom import make_study
from kontur.testing.orthanc import OrthancProcess
from kontur.testing.replication import node_config


pytestmark = pytest.mark.orthanc
REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "tests" / "data" / "small-region.yaml"


def call(o, login: str, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(o.url.rstrip("/") + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{login}:pw-{login}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def with_issuer(study, issuer: str):
    """The study as the hospital's node sends it: Issuer of Patient ID stamped at ingest."""
    out = []
    for inst in study.instances:
        ds = pydicom.dcmread(io.BytesIO(inst.data))
        ds.IssuerOfPatientID = issuer
        buf = io.BytesIO()
        ds.save_as(buf, write_like_original=False)
        out.append(dataclasses.replace(inst, data=buf.getvalue()))
    study.instances[:] = out
    return study


@pytest.fixture
def tsami(tmp_path, processes):
    region = load(SMALL)
    table = roles_table(region, "tsami")
    assert table["ivanova"].get("hospital") == "city" and "hospital" not in table["archivist"]
    policy = build_policy(region, "tsami", None, state_dir=str(tmp_path / "state"))
    pp = tmp_path / "policy.json"
    pp.write_text(json.dumps(policy))
    cfg = node_config(pp, stable_age=3600)
    cfg.update({"KonturRoles": table, "LuaScripts": [str(REPO / "orthanc-lua" / "roles.lua")],
                "RegisteredUsers": {login: f"pw-{login}" for login in table}})
    o = OrthancProcess("tsami", cfg, tmp_path / "orthanc", aet="TSAMI", username=SERVICE_USER,
                       password=f"pw-{SERVICE_USER}")
    processes.append(o)
    o.start()
    own = with_issuer(make_study(2, patient_id="12345", accession="ACC1"), region.issuer_of("city"))
    other = with_issuer(make_study(2, patient_id="777", accession="R-9"), region.issuer_of("rural"))
    for s in (own, other):
        for inst in s.instances:
            o.upload(inst.data)
    return o, own, other


def test_a_hospitals_radiologist_opens_their_own_study_and_a_shared_one_while_the_share_lasts(tsami):
    o, own, other = tsami
    own_url, other_url = f"/kontur/view/12345/ACC1/{own.study_uid}", f"/kontur/view/777/R-9/{other.study_uid}"
    status, page = call(o, "ivanova", "GET", own_url)
    assert status == 200, page[:500]
    images = [x.split('"')[0] for x in page.decode().split('class="image" alt="" src="')[1:]]
    assert len(images) == 2
    status, png = call(o, "ivanova", "GET", own_url.rsplit("/", 1)[0] + "/" + images[0])
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    # no other route of the TsAMI: not its studies, not Orthanc Explorer, not the shares
    for method, path in (("GET", "/studies"), ("GET", "/app/explorer.html"), ("GET", "/kontur/shares"),
                         ("GET", f"/studies/{other.orthanc_id()}/archive"), ("DELETE", f"/studies/{own.orthanc_id()}")):
        assert call(o, "ivanova", method, path)[0] == 403, (method, path)
    # another hospital's study: refused, saying why; its image neither
    status, page = call(o, "ivanova", "GET", other_url)
    assert status == 403 and "not shared with it" in page.decode(), page[:500]
    foreign = o.get(f"/studies/{other.orthanc_id()}/instances")[0]["ID"]
    assert call(o, "ivanova", "GET", own_url + "/images/" + foreign)[0] == 404
    assert call(o, "ivanova", "POST", "/kontur/shares", {"study": other.study_uid, "hospital": "city",
                                                         "reason": "x"})[0] == 403
    # an operator shares it with the city hospital for a day
    status, body = call(o, SERVICE_USER, "POST", "/kontur/shares",
                        {"study": "R-9", "hospital": "city", "days": 1, "reason": "второе мнение"})
    assert status == 200, body
    share = json.loads(body)["share"]
    assert (share["study_uid"], share["hospital"], share["state"], share["granted_by"]) == \
        (other.study_uid, "city", "active", SERVICE_USER)
    status, page = call(o, "ivanova", "GET", other_url)
    assert status == 200 and "777" in page.decode()
    # the region-wide archivist sees both, no share needed, and gets Orthanc Explorer's link
    status, page = call(o, "archivist", "GET", other_url)
    assert status == 200 and "explorer.html" in page.decode()
    # revoked: closed again; every step is in the audit trail
    status, body = call(o, SERVICE_USER, "DELETE", f"/kontur/shares/{share['id']}")
    assert status == 200 and json.loads(body)["share"]["state"] == "revoked"
    assert call(o, "ivanova", "GET", other_url)[0] == 403
    audit = json.loads(call(o, SERVICE_USER, "GET", "/kontur/shares")[1])["audit"]
    assert [(a["what"], a["who"]) for a in audit] == [("shared", SERVICE_USER), ("opened through share", "ivanova"),
                                                      ("share revoked", SERVICE_USER)]
    assert all(a["study_uid"] == other.study_uid and a["hospital"] == "city" for a in audit)


@pytest.mark.parametrize("body,code,words", [
    ({"study": "NOPE-1", "hospital": "city", "reason": "второе мнение"}, 404, "only a study delivered"),
    ({"study": "R-9", "hospital": "mars", "reason": "второе мнение"}, 400, "expected one of city, rural"),
    ({"study": "R-9", "hospital": "city", "days": 0, "reason": "второе мнение"}, 400, "from 1 to 90"),
    ({"study": "R-9", "hospital": "city", "days": "7", "reason": "второе мнение"}, 400, "whole number"),
    ({"study": "R-9", "hospital": "city"}, 400, "why the study is shared"),
])
def test_a_share_request_that_cannot_be_taken_is_refused_saying_what_was_expected(tsami, body, code, words):
    o, _, _ = tsami
    status, answer = call(o, SERVICE_USER, "POST", "/kontur/shares", body)
    assert status == code and words in json.loads(answer)["error"], answer
    assert json.loads(call(o, SERVICE_USER, "GET", "/kontur/shares")[1]) == {"shares": [], "audit": []}


def test_an_operator_shares_lists_and_revokes_with_the_cli(tsami, monkeypatch, capsys):
    from kontur import nodeapi
    from kontur.cli import main as kontur_main
    o, own, other = tsami
    monkeypatch.setattr(nodeapi, "client_for", lambda region_, node, *, lab=False: nodeapi.NodeClient(
        o.url, SERVICE_USER, f"pw-{SERVICE_USER}", name=node))

    def run(*args):
        rc = kontur_main(["study", *args, "-i", str(SMALL)])
        cap = capsys.readouterr()
        return rc, cap.out, cap.err

    rc, out, err = run("share", "R-9", "--with", "city", "--days", "3", "--reason", "двойное чтение")
    assert rc == 0 and f"shared study {other.study_uid} with city on tsami" in out, (out, err)
    assert call(o, "ivanova", "GET", f"/kontur/view/777/R-9/{other.study_uid}")[0] == 200
    rc, out, _ = run("shares", "--json")
    body = json.loads(out)
    assert rc == 0 and [(s["hospital"], s["state"]) for s in body["shares"]] == [("city", "active")]
    rc, out, err = run("share", "NOPE-1", "--with", "city", "--reason", "x")     # not in the TsAMI
    assert rc == 2 and "only a study delivered to the TsAMI can be shared" in err, (out, err)
    rc, out, err = run("share", "R-9", "--with", "mars", "--reason", "x")
    assert rc == 2 and "not a hospital of the inventory" in err
    rc, out, _ = run("unshare", str(body["shares"][0]["id"]))
    assert rc == 0 and "revoked" in out
    assert call(o, "ivanova", "GET", f"/kontur/view/777/R-9/{other.study_uid}")[0] == 403
