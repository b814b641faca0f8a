# SPDX-License-Identifier: AGPL-3.0-or-later
"""The rights-by-role Lua filter (orthanc-lua/roles.lua) inside Debian's Orthanc,
with the roles table the renderer makes for the small region's LAMI (R6): each
role may do what the inventory grants and nothing more; a login missing from the
table is refused; kontur's own routes are for admins."""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kontur.inventory import load
from kontur.model import Permissions
from kontur.render.orthanc import SERVICE_USER, plugin_config, roles_table
from kontur.testing.dicom import make_study
from kontur.testing.orthanc import OrthancProcess, wait_for

pytestmark = pytest.mark.orthanc

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "tests" / "data" / "small-region.yaml"
NODE = "city-lami"
#: a login with the rights a role gets when the inventory grants nothing more: view only
VIEWER = "viewer"


def call(o: OrthancProcess, login: str, method: str, path: str, body: bytes | None = None) -> int:
    req = urllib.request.Request(o.url.rstrip("/") + path, data=body, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{login}:pw-{login}".encode()).decode())
    if body is not None:
        req.add_header("Content-Type", "application/dicom")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture(scope="module")
def lami(tmp_path_factory):
    region = load(SMALL)
    table = roles_table(region, NODE)
    table[VIEWER] = Permissions().model_dump()
    # "stranger" is an Orthanc user the role table does not know
    users = {login: f"pw-{login}" for login in [*table, "stranger"]}
    # the plugins as rendered for the node (DICOMweb with WADO-URI, the Web Viewer); SQLite here
    cfg = plugin_config(region, NODE, python=False)
    cfg["Plugins"] = [p for p in cfg["Plugins"] if "PostgreSQL" not in p]
    cfg.update({"KonturRoles": table, "LuaScripts": [str(REPO / "orthanc-lua" / "roles.lua")],
                "RegisteredUsers": users})
    o = OrthancProcess(NODE, cfg, tmp_path_factory.mktemp("roles"), username=SERVICE_USER,
                       password=f"pw-{SERVICE_USER}")
    o.start()
    try:
        study = make_study(2)
        for inst in study.instances:
            o.upload(inst.data)
        yield o, table, study
    finally:
        o.stop()


def test_the_table_is_the_inventorys(lami):
    _o, table, _s = lami
    assert table["ivanova"] == {"view": True, "download": True, "upload": False, "delete": False, "admin": False}
    assert table[SERVICE_USER]["admin"] is True
    assert "archivist" not in table            # an account on the TsAMI only


def test_a_radiologist_views_and_downloads_but_neither_uploads_nor_deletes(lami):
    o, _t, study = lami
    iid = o.instance_ids()[0]
    assert call(o, "ivanova", "GET", "/patients") == 200
    assert call(o, "ivanova", "GET", "/app/explorer.html") == 200
    assert call(o, "ivanova", "POST", "/tools/find", b'{"Level": "Study", "Query": {}}') == 200
    assert call(o, "ivanova", "GET", f"/instances/{iid}/file") == 200
    assert call(o, "ivanova", "POST", "/instances", make_study(1).instances[0].data) == 403
    assert call(o, "ivanova", "DELETE", f"/instances/{iid}") == 403
    assert call(o, "ivanova", "PUT", "/tools/log-level", b"verbose") == 403
    assert len(o.instance_ids()) == len(study.instances)


def test_a_login_missing_from_the_role_table_is_refused(lami):
    o, _t, _s = lami
    assert call(o, "stranger", "GET", "/patients") == 403
    assert call(o, "stranger", "GET", "/system") == 403


def test_kontur_routes_are_for_admins_only(lami):
    """Replication status and the parked list are operators' business: a doctor
    is refused (403); the service account passes the filter (404 here: no plugin
    is loaded to answer)."""
    o, _t, _s = lami
    for path in ("/kontur/replication", "/kontur/replication/parked"):
        assert call(o, "ivanova", "GET", path) == 403, path
        assert call(o, SERVICE_USER, "GET", path) == 404, path


def test_the_service_account_may_do_everything(lami):
    o, _t, _s = lami
    before = set(o.instance_ids())
    o.upload(make_study(1).instances[0].data)
    (iid,) = set(o.instance_ids()) - before
    assert call(o, SERVICE_USER, "DELETE", f"/instances/{iid}") == 200
    assert set(o.instance_ids()) == before


# --- defect 10 of issue 15: rights decided per route, deny by default ---------------------------
#
# Every route of Orthanc 1.10.1, the DICOMweb plugin 1.7 and the Web Viewer 2.8 (Debian 12) that
# hands out a DICOM file or its stored data.  A view-only user is refused each one (403); a
# radiologist (view + download) gets it (200).  {placeholders} are filled from the study stored in
# the module's Orthanc.
DOWNLOAD_ROUTES = [
    ("GET", "/instances/{instance}/file"),
    ("GET", "/instances/{instance}/file/"),                   # a trailing slash: Orthanc serves the file
    ("GET", "//instances//{instance}//file"),
    ("GET", "/instances/{instance}/fil%65"),                  # Orthanc decodes before the filter
    ("GET", "/instances/{instance}/./file"),
    ("GET", "/instances%2F{instance}%2Ffile"),
    ("GET", "/instances/{instance}/attachments/dicom/data"),
    ("GET", "/instances/{instance}/attachments/dicom/compressed-data"),
    ("GET", "/instances/{instance}/content/7fe0-0010"),       # the pixel data element, raw
    ("GET", "/instances/{instance}/content/7fe0-0010/0"),
    ("GET", "/instances/{instance}/frames/0/raw"),
    ("GET", "/instances/{instance}/frames/0/raw.gz"),
    ("GET", "/instances/{instance}/frames/0/image-uint8"),    # decoded pixel values, not a picture
    ("GET", "/instances/{instance}/frames/0/image-uint16"),
    ("GET", "/instances/{instance}/frames/0/image-int16"),
    ("GET", "/instances/{instance}/frames/0/numpy"),
    ("GET", "/instances/{instance}/frames/0/matlab"),
    ("GET", "/instances/{instance}/image-uint8"),
    ("GET", "/instances/{instance}/image-uint16"),
    ("GET", "/instances/{instance}/image-int16"),
    ("GET", "/instances/{instance}/numpy"),
    ("GET", "/instances/{instance}/matlab"),
    ("GET", "/series/{series}/numpy"),
    ("GET", "/patients/{patient}/archive"),
    ("GET", "/studies/{study}/archive"),
    ("GET", "/series/{series}/archive"),
    ("GET", "/patients/{patient}/media"),
    ("GET", "/studies/{study}/media"),
    ("GET", "/series/{series}/media"),
    ("POST", "/studies/{study}/archive"),
    ("POST", "/studies/{study}/media"),
    ("POST", "/tools/create-archive"),
    ("POST", "/tools/create-media"),
    ("POST", "/tools/create-media-extended"),
    # DICOMweb: WADO-RS (the objects themselves, their frames, their bulk data)
    ("GET", "/dicom-web/studies/{study_uid}"),
    ("GET", "/dicom-web/studies/{study_uid}/"),
    ("GET", "/dicom-web/studies/{study_uid}/series/{series_uid}"),
    ("GET", "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"),
    ("GET", "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/1"),
    ("GET", "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulk/7fe00010"),
    # WADO-URI: the filter sees "/wado" without the query, so even a JPEG is a download
    ("GET", "/wado?requestType=WADO&studyUID={study_uid}&seriesUID={series_uid}&objectUID={sop_uid}"
            "&contentType=application/dicom"),
    ("GET", "/wado?requestType=WADO&studyUID={study_uid}&seriesUID={series_uid}&objectUID={sop_uid}"),
]

#: what viewing takes: Orthanc Explorer, metadata, rendered pictures, the Web Viewer
VIEW_ROUTES = [
    ("GET", "/"),
    ("GET", "/app/explorer.html"),
    ("GET", "/app/explorer.js"),
    ("GET", "/system"),
    ("GET", "/plugins"),
    ("GET", "/plugins/explorer.js"),
    ("GET", "/patients"),
    ("GET", "/studies"),
    ("GET", "/series"),
    ("GET", "/instances"),
    ("GET", "/patients/{patient}"),
    ("GET", "/studies/{study}"),
    ("GET", "/series/{series}"),
    ("GET", "/instances/{instance}"),
    ("GET", "/instances/{instance}/"),
    ("GET", "/patients/{patient}/studies"),
    ("GET", "/studies/{study}/series"),
    ("GET", "/studies/{study}/instances"),
    ("GET", "/series/{series}/instances"),
    ("GET", "/instances/{instance}/series"),
    ("GET", "/studies/{study}/patient"),
    ("GET", "/patients/{patient}/protected"),
    ("GET", "/studies/{study}/shared-tags"),
    ("GET", "/studies/{study}/module"),
    ("GET", "/studies/{study}/statistics"),
    ("GET", "/series/{series}/ordered-slices"),
    ("GET", "/instances/{instance}/tags"),
    ("GET", "/instances/{instance}/simplified-tags"),
    ("GET", "/instances/{instance}/header"),
    ("GET", "/instances/{instance}/metadata"),
    ("GET", "/instances/{instance}/metadata/TransferSyntax"),
    ("GET", "/instances/{instance}/attachments"),
    ("GET", "/instances/{instance}/attachments/dicom/size"),
    ("GET", "/instances/{instance}/attachments/dicom/md5"),
    ("GET", "/instances/{instance}/frames"),
    ("GET", "/instances/{instance}/preview"),
    ("GET", "/instances/{instance}/rendered"),
    ("GET", "/instances/{instance}/frames/0/preview"),
    ("GET", "/instances/{instance}/frames/0/rendered"),
    ("POST", "/tools/find"),
    ("POST", "/tools/lookup"),
    # DICOMweb: QIDO-RS searches, metadata, rendered pictures
    ("GET", "/dicom-web/studies"),
    ("GET", "/dicom-web/series"),
    ("GET", "/dicom-web/instances"),
    ("GET", "/dicom-web/studies/{study_uid}/series"),
    ("GET", "/dicom-web/studies/{study_uid}/instances"),
    ("GET", "/dicom-web/studies/{study_uid}/series/{series_uid}/instances"),
    ("GET", "/dicom-web/studies/{study_uid}/metadata"),
    ("GET", "/dicom-web/studies/{study_uid}/series/{series_uid}/metadata"),
    ("GET", "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata"),
    ("GET", "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/rendered"),
    ("GET", "/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/frames/1/rendered"),
    # the Web Viewer the viewer link's page opens
    ("GET", "/web-viewer/app/viewer.html"),
    ("GET", "/web-viewer/series/{series}"),
    ("GET", "/web-viewer/is-stable-series/{series}"),
    ("GET", "/web-viewer/instances/jpeg95-{instance}_0"),
]

#: anything else is not viewing: operators' routes, refused to doctors (deny by default)
ADMIN_ROUTES = [
    ("GET", "/statistics"),
    ("GET", "/changes"),
    ("GET", "/exports"),
    ("GET", "/jobs"),
    ("GET", "/modalities"),
    ("GET", "/peers"),
    ("GET", "/queries"),
    ("GET", "/tools/log-level"),
    ("GET", "/tools/dicom-conformance"),
    ("GET", "/dicom-web/servers"),
    ("GET", "/dicom-web/info"),
    ("GET", "/dicom-web/app/client/index.html"),
    ("PUT", "/patients/{patient}/protected"),
    ("POST", "/studies/{study}/anonymize"),
    ("POST", "/studies/{study}/modify"),
    ("POST", "/instances/{instance}/attachments/dicom/verify-md5"),
    ("POST", "/tools/bulk-content"),
    ("POST", "/tools/create-dicom"),
    ("DELETE", "/changes"),
]

BODIES = {
    "/tools/find": b'{"Level": "Study", "Query": {}}',
    "/tools/create-archive": b'{"Resources": ["{study}"], "Synchronous": true}',
    "/tools/create-media": b'{"Resources": ["{study}"], "Synchronous": true}',
    "/tools/create-media-extended": b'{"Resources": ["{study}"], "Synchronous": true}',
    "/studies/{study}/archive": b'{"Synchronous": true}',
    "/studies/{study}/media": b'{"Synchronous": true}',
    "/tools/lookup": b"{study_uid}",
    "/tools/bulk-content": b'{"Resources": ["{study}"]}',
    "/tools/create-dicom": b'{"Tags": {"PatientName": "X"}}',
    "/studies/{study}/anonymize": b"{}",
    "/studies/{study}/modify": b'{"Replace": {"StudyDescription": "x"}}',
    "/patients/{patient}/protected": b"1",
}


@pytest.fixture(scope="module")
def ids(lami):
    o, _t, study = lami
    sid = study.orthanc_id()
    st = o.get(f"/studies/{sid}")
    inst = study.instances[0]
    iid = o.post("/tools/lookup", inst.sop_uid.encode())[0]["ID"]
    return {"study": sid, "patient": st["ParentPatient"], "series": o.get(f"/instances/{iid}/series")["ID"],
            "instance": iid, "study_uid": study.study_uid, "series_uid": inst.series_uid, "sop_uid": inst.sop_uid}


def fill(template: str, ids: dict) -> str:
    for k, v in ids.items():
        template = template.replace("{" + k + "}", v)
    return template


def request(o, login: str, method: str, path: str, ids: dict) -> int:
    body = BODIES.get(path)
    if body is None and method in ("POST", "PUT"):
        body = b""
    return call(o, login, method, fill(path, ids), fill(body.decode(), ids).encode() if body is not None else None)


def test_the_view_only_user_is_the_inventorys_default_role(lami):
    _o, table, _s = lami
    assert table[VIEWER] == {"view": True, "download": False, "upload": False, "delete": False, "admin": False}


@pytest.mark.parametrize("method,path", DOWNLOAD_ROUTES, ids=[f"{m} {p}" for m, p in DOWNLOAD_ROUTES])
def test_a_view_only_user_gets_no_dicom_by_any_download_route(lami, ids, method, path):
    o, _t, _s = lami
    assert request(o, VIEWER, method, path, ids) == 403
    assert request(o, "ivanova", method, path, ids) == 200       # the radiologist may download


@pytest.mark.parametrize("method,path", VIEW_ROUTES, ids=[f"{m} {p}" for m, p in VIEW_ROUTES])
def test_a_view_only_user_may_view(lami, ids, method, path):
    o, _t, _s = lami
    assert request(o, VIEWER, method, path, ids) == 200
    assert request(o, "stranger", method, path, ids) == 403


@pytest.mark.parametrize("method,path", ADMIN_ROUTES, ids=[f"{m} {p}" for m, p in ADMIN_ROUTES])
def test_a_route_not_in_the_table_is_for_admins_only(lami, ids, method, path):
    o, _t, _s = lami
    assert request(o, VIEWER, method, path, ids) == 403
    assert request(o, "ivanova", method, path, ids) == 403
    if method == "GET":                                          # (nothing changed by the check)
        assert request(o, SERVICE_USER, method, path, ids) != 403


def stow(o, login: str, dicom: bytes) -> int:
    """DICOMweb STOW-RS of one instance."""
    boundary = "kontur-test-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + dicom
            + f"\r\n--{boundary}--\r\n".encode())
    req = urllib.request.Request(o.url.rstrip("/") + "/dicom-web/studies", data=body, method="POST")
    req.add_header("Authorization", "Basic " + base64.b64encode(f"{login}:pw-{login}".encode()).decode())
    req.add_header("Content-Type", f'multipart/related; type="application/dicom"; boundary={boundary}')
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_storing_and_deleting_take_their_own_rights(lami, ids):
    """Upload (Orthanc's REST and DICOMweb STOW-RS) needs "upload"; deleting a
    resource needs "delete": a viewer has neither; the upstream's account
    (view, download, upload) stores but does not delete."""
    o, _t, _s = lami
    before = set(o.instance_ids())
    one, two = make_study(1).instances[0].data, make_study(1).instances[0].data
    assert call(o, VIEWER, "POST", "/instances", one) == 403
    assert stow(o, VIEWER, one) == 403
    assert call(o, VIEWER, "DELETE", f"/instances/{ids['instance']}") == 403
    assert call(o, VIEWER, "DELETE", f"/studies/{ids['study']}") == 403
    assert set(o.instance_ids()) == before
    assert call(o, "peer-tsami", "POST", "/instances", one) == 200
    assert stow(o, "peer-tsami", two) == 200
    added = set(o.instance_ids()) - before
    assert len(added) == 2
    for iid in added:
        assert call(o, "peer-tsami", "DELETE", f"/instances/{iid}") == 403
        assert call(o, SERVICE_USER, "DELETE", f"/instances/{iid}") == 200
    assert set(o.instance_ids()) == before


def test_an_asynchronous_archive_is_a_download_too(lami, ids):
    """The radiologist's archive job and its output: a view-only user can
    neither start one nor read the job or fetch the ZIP it made."""
    o, _t, _s = lami
    sid = ids["study"]
    assert call(o, VIEWER, "POST", f"/studies/{sid}/archive", b'{"Asynchronous": true}') == 403
    req = urllib.request.Request(o.url + f"studies/{sid}/archive", data=b'{"Asynchronous": true}', method="POST")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"ivanova:pw-ivanova").decode())
    with urllib.request.urlopen(req, timeout=30) as r:
        job = json.loads(r.read())["ID"]
    wait_for(lambda: o.get(f"/jobs/{job}")["State"] == "Success", 60, message="the archive job done")
    for path in (f"/jobs/{job}", f"/jobs/{job}/archive"):
        assert call(o, VIEWER, "GET", path) == 403, path
        assert call(o, "ivanova", "GET", path) == 200, path
    assert call(o, "ivanova", "GET", "/jobs") == 403              # everyone's jobs: operators'


SPY_LUA = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  print("kontur-filter-saw|" .. method .. "|" .. uri .. "|")
  return true
end
"""


def test_what_orthanc_passes_to_the_filter_as_uri(tmp_path):
    """What roles.lua relies on, asked of Debian's Orthanc itself: the path
    without its query string (so WADO-URI's contentType is out of sight),
    percent-decoded (%2F included) and without dot segments or doubled
    slashes, but with a trailing slash kept (hence the split into components)."""
    lua = tmp_path / "spy.lua"
    lua.write_text(SPY_LUA)
    cfg = plugin_config(load(SMALL), NODE, python=False)
    cfg["Plugins"] = [p for p in cfg["Plugins"] if "PostgreSQL" not in p]
    cfg["LuaScripts"] = [str(lua)]
    o = OrthancProcess("spy", cfg, tmp_path / "orthanc", username=SERVICE_USER, password=f"pw-{SERVICE_USER}")
    o.start()
    try:
        sent = ["/wado?requestType=WADO&studyUID=1.2.3&seriesUID=1.2.3.4&objectUID=1.2.3.4.5&contentType=image/jpeg",
                "/instances/abc/fil%65", "/instances/x/../abc/file", "/instances/abc/./file", "//instances//abc//file",
                "/instances%2Fabc%2Ffile", "/instances/abc/file/", "/dicom-web/studies/1.2.3/"]
        for path in sent:
            call(o, SERVICE_USER, "GET", path)
    finally:
        o.stop()
    seen = [line.split("kontur-filter-saw|", 1)[1].rsplit("|", 1)[0]
            for line in o.log_path.read_text(errors="replace").splitlines() if "kontur-filter-saw|GET|" in line]
    assert seen[-len(sent):] == ["GET|/wado", "GET|/instances/abc/file", "GET|/instances/abc/file",
                                 "GET|/instances/abc/file", "GET|/instances/abc/file", "GET|/instances/abc/file",
                                 "GET|/instances/abc/file/", "GET|/dicom-web/studies/1.2.3/"], seen
