"""The page behind the viewer URL (issue 12; reglament 004 §4.2-4.3), served
by kontur's plugin inside Debian's Orthanc with the inventory's users and
roles, looked at by headless Chromium (Debian's ``chromium``): the study's
images and its report (which came as an ORU through the HL7 service), the
Cyrillic intact; a forged patient/study pair, a malformed link and a login
without rights get no page."""
from __future__ import annotations

import base64
import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kontur.inventory import load
from kontur.render.orthanc import SERVICE_USER, WEB_VIEWER, roles_table
from kontur.testing.browser import Chromium, keep_artefact
from kontur.testing.dicom import make_study, send_study
from kontur.testing.hl7 import REPORTS_AET, Hl7Service, orm, oru
from kontur.testing.orthanc import PLUGIN_DIR, OrthancProcess, wait_for
from kontur.testing.replication import SCU_AET, make_policy, node_config

pytestmark = pytest.mark.orthanc
REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "tests" / "data" / "small-region.yaml"


def _get(o, login: str, path: str) -> tuple[int, str]:
    req = urllib.request.Request(o.url.rstrip("/") + path)
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{login}:pw-{login}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode("utf-8")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


@pytest.fixture
def archive(tmp_path, processes):
    table = roles_table(load(SMALL), "city-lami")
    users = {login: f"pw-{login}" for login in [*table, "stranger"]}
    policy = make_policy("http://127.0.0.1:9/", tmp_path / "state")
    pp = tmp_path / "policy.json"
    pp.write_text(json.dumps(policy))
    cfg = node_config(pp, stable_age=3600)
    cfg["Plugins"] = [*cfg["Plugins"], f"{PLUGIN_DIR}/{WEB_VIEWER}"]       # as rendered for a node
    cfg.update({"KonturRoles": table, "LuaScripts": [str(REPO / "orthanc-lua" / "roles.lua")],
                "RegisteredUsers": users, "DicomAlwaysAllowFind": False, "DicomCheckModalityHost": True,
                "DicomModalities": {
                    "test-scu": {"AET": SCU_AET, "Host": "127.0.0.1", "Port": 11112, "AllowStore": True},
                    "kontur-hl7": {"AET": REPORTS_AET, "Host": "127.0.0.1", "Port": 104, "AllowStore": True,
                                   "AllowFind": True}}})
    o = OrthancProcess("lami", cfg, tmp_path / "orthanc", aet="CITY_LAMI", username=SERVICE_USER,
                       password=f"pw-{SERVICE_USER}")
    processes.append(o)
    o.start()
    hl7 = Hl7Service(tmp_path / "hl7", reports={"host": "127.0.0.1", "port": o.dicom_port, "called_aet": o.aet})
    hl7.start()
    yield o, hl7
    hl7.stop(signal.SIGKILL)


def _study_with_report(tmp_path, o, hl7):
    with hl7.client() as c:
        assert b"MSA|AA|" in c.send_message(orm(cid="M1"))
        uid = hl7.items()[0]["study_uid"]
        study = make_study(3, patient_id="12345", patient_name="Иванов^Пётр^Ильич", study_uid=uid, accession="ACC1",
                           n_series=2)
        send_study(study, tmp_path / "files", port=o.dicom_port, called_aet=o.aet, calling_aet=SCU_AET)
        assert b"MSA|AA|" in c.send_message(oru(cid="R1", conclusion="Образование правого лёгкого, T1N0.",
                                                flag="A"))
    wait_for(lambda: hl7.results()[0]["state"] == "attached", 30, message="the report attached")
    return study, uid


def test_the_link_shows_the_studys_images_and_report_in_a_browser(tmp_path, archive):
    o, hl7 = archive
    study, uid = _study_with_report(tmp_path, o, hl7)
    url = o.url.rstrip("/").replace("://", "://ivanova:pw-ivanova@") + f"/kontur/view/12345/ACC1/{uid}"
    with Chromium() as browser:
        html = browser.dom(url)
        assert "Иванов Пётр Ильич" in html and "Образование правого лёгкого, T1N0." in html, html[:3000]
        assert "Очаговых изменений в лёгких не выявлено." in html
        shown = re.search(r'data-images="(\d+)"', html)
        expected = re.search(r'data-expected="(\d+)"', html)
        assert shown and expected and int(expected.group(1)) == 3 and shown.group(1) == "3", html[:3000]
        shot = browser.screenshot(url, tmp_path / "viewer.png")
        # each series opens in Orthanc's Web Viewer (Debian's orthanc-webviewer), with the same login
        links = re.findall(r'href="\.\./\.\./\.\./\.\./(web-viewer/app/viewer\.html\?series=([0-9a-f-]+))"', html)
        assert len(links) == 2, html[:3000]
        assert _get(o, "ivanova", "/" + links[0][0])[0] == 200
        status, body = _get(o, "ivanova", f"/web-viewer/series/{links[0][1]}")
        assert status == 200 and len(json.loads(body)["Slices"]) >= 1, body[:300]
    assert shot.stat().st_size > 10_000
    keep_artefact(shot, "viewer-loopback.png")


def test_a_forged_pair_a_malformed_link_and_a_login_without_rights_get_no_page(tmp_path, archive):
    o, hl7 = archive
    study, uid = _study_with_report(tmp_path, o, hl7)
    assert _get(o, "ivanova", f"/kontur/view/12345/ACC1/{uid}")[0] == 200
    assert _get(o, "ivanova", f"/kontur/view/12345/-/{uid}")[0] == 200          # no accession given
    for path, code in ((f"/kontur/view/99999/ACC1/{uid}", 404),               # another patient
                       (f"/kontur/view/12345/ACC2/{uid}", 404),               # another order
                       ("/kontur/view/12345/ACC1/1.2.3.4.5", 404),            # a study not here
                       ("/kontur/view/12345/ACC1/1.2.x%3Cscript%3E", 400),    # not a UID
                       ("/kontur/view/%3Cb%3E/ACC1/1.2.3", 404)):
        status, body = _get(o, "ivanova", path)
        assert status == code, (path, status, body[:300])
        assert "<script>" not in body and "<b>" not in body
        assert "99999" not in body or code != 404 or "Иванов" not in body     # never whose study it is
    assert _get(o, "stranger", f"/kontur/view/12345/ACC1/{uid}")[0] in (401, 403)   # not in the role table
    # a viewer still cannot delete
    req = urllib.request.Request(o.url.rstrip("/") + f"/studies/{study.orthanc_id()}", method="DELETE")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"ivanova:pw-ivanova").decode())
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code in (401, 403)
