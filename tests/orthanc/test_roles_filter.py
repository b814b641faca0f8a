# SPDX-License-Identifier: AGPL-3.0-or-later
"""The rights-by-role Lua filter (orthanc-lua/roles.lua) inside Debian's Orthanc,
with the roles table the renderer makes for the small region's LAMI (R6): each
role may do what the inventory grants and nothing more; a login missing from the
table is refused; kontur's own routes are for admins."""
from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kontur.inventory import load
from kontur.render.orthanc import SERVICE_USER, roles_table
from kontur.testing.dicom import make_study
from kontur.testing.orthanc import OrthancProcess

pytestmark = pytest.mark.orthanc

REPO = Path(__file__).resolve().parents[2]
SMALL = REPO / "tests" / "data" / "small-region.yaml"
NODE = "city-lami"


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
    # "stranger" is an Orthanc user the role table does not know
    users = {login: f"pw-{login}" for login in [*table, "stranger"]}
    o = OrthancProcess(NODE, {"KonturRoles": table, "LuaScripts": [str(REPO / "orthanc-lua" / "roles.lua")],
                              "RegisteredUsers": users},
                       tmp_path_factory.mktemp("roles"), username=SERVICE_USER, password=f"pw-{SERVICE_USER}")
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
    iid = o.instance_ids()[-1]
    assert call(o, SERVICE_USER, "DELETE", f"/instances/{iid}") == 200
