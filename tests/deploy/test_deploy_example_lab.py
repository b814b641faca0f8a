# SPDX-License-Identifier: AGPL-3.0-or-later
"""The whole example region deploys in the lab: eight nodes of every role,
from clean hosts; a re-deploy changes nothing; every archive answers its
inventory modalities; the reference centre's users reach the TsAMI through
the centre's nginx (which presents the node's regional client certificate)."""
from __future__ import annotations

import subprocess

import pytest

from kontur.inventory import EXAMPLE_INVENTORY, load
from kontur.lab.state import lab_region
from kontur.pki import operator_cert
from kontur.secrets import SecretStore, default_dir

from deploy_helpers import deploy, in_netns

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def deployed(example_lab):
    return deploy(EXAMPLE_INVENTORY)


@pytest.fixture(scope="module")
def region(example_lab):
    return lab_region(load(EXAMPLE_INVENTORY), example_lab)


def test_example_region_deploys_and_redeploys_without_changes(example_lab, deployed):
    assert deployed.rc == 0, deployed.out
    assert (deployed.hosts, deployed.failed) == (8, 0), deployed.out
    again = deploy(EXAMPLE_INVENTORY)
    assert again.rc == 0 and again.changed == 0, again.out


def test_every_archive_answers_its_modalities(example_lab, deployed, region):
    for h in region.hospitals.values():
        if not h.node or region.nodes[h.node].role.value == "reference":
            continue
        spec = region.nodes[h.node]
        for m in h.modalities:
            p = in_netns(example_lab.modalities[m.aet].netns,
                         ["timeout", "20", "echoscu", "-to", "3", "-aet", m.aet, "-aec", spec.aet,
                          spec.address, str(region.ports(h.node).dicom)])
            assert p.returncode == 0, f"C-ECHO {m.aet} -> {spec.aet}: {p.stdout}"


def test_reference_centre_users_reach_the_tsami_through_its_nginx(example_lab, deployed, region):
    store = SecretStore(default_dir(example_lab.region_name, lab=True))
    ca, _crt, _key = operator_cert(store, region.region.title)
    ref = next(n for n, s in region.nodes.items() if s.role.value == "reference")
    spec = region.nodes[ref]
    user = next(u for u in region.users_of(spec.reads_from) if ref in (u.nodes or []))
    url = f"https://{spec.address}:{region.ports(ref).https}/system"

    def code(*auth: str) -> str:
        p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                            "--cacert", str(ca), *auth, url], stdout=subprocess.PIPE, text=True, timeout=30)
        return p.stdout.strip()

    assert code("-u", f"{user.login}:{store.password('users/' + user.login)}") == "200"
    assert code("-u", f"{user.login}:wrong") == "401"
    assert code("-u", "orthanc:orthanc") == "401"


def test_compliance_checks_pass_on_the_deployed_region(example_lab, deployed, tmp_path):
    """``kontur check --lab``: every read-only control (checks/) passes on
    every node, and the JUnit report names each control per node."""
    from deploy_helpers import kontur

    report = tmp_path / "audit.xml"
    r = kontur("check", "--lab", "-i", str(EXAMPLE_INVENTORY), "--report", str(report), timeout=900)
    assert r.rc == 0, r.out
    xml = report.read_text()
    assert "test_credentials_file_is_0600[onco-lami]" in xml
    assert "test_files_match_the_inventory[ref-web]" in xml
    assert 'failures="0"' in xml and 'errors="0"' in xml


def test_compliance_checks_find_drift(example_lab, deployed):
    """A hand edit on a node is caught by KONTUR-CFG-01 (and undone by the next deploy)."""
    from deploy_helpers import kontur, on_host

    p = on_host(example_lab, "gkb3-lami", "chmod 0644 /etc/orthanc/dicom.json")
    assert p.returncode == 0, p.stderr
    try:
        r = kontur("check", "--lab", "-i", str(EXAMPLE_INVENTORY), "--node", "gkb3-lami",
                   "-k", "files_match", timeout=600)
        assert r.rc == 1, r.out
        assert "/etc/orthanc/dicom.json: mode 0644, expected 0640" in r.out
    finally:
        fixed = deploy(EXAMPLE_INVENTORY, "--limit", "gkb3-lami")
        assert fixed.rc == 0 and fixed.changed >= 1, fixed.out


def test_one_study_walks_the_reglaments_path_and_its_link_opens_for_the_hospitals_doctor(
        example_lab, deployed, region):
    """Issue 12's path on the deployed example region (`kontur lab walk`, as
    `./run demo` runs it): gkb3's MIS orders, its CT finds the order on its
    worklist, MPPS, images, the result with pathology; then under the
    pathology policy the study goes to the TsAMI and the MIS is told each
    step with the viewer URL.  That URL, through gkb3-lami's nginx (mutual
    TLS) with the hospital doctor's password, shows the report; another
    hospital's doctor and a wrong password are refused."""
    import json as _json

    from deploy_helpers import kontur
    r = kontur("lab", "walk", "--hospital", "gkb3", timeout=900)
    assert r.rc == 0, r.out
    for words in ("the MIS ordered it", "found it on its worklist", "MPPS IN PROGRESS", "stored 3 images",
                  "MPPS COMPLETED", "archived in the LAMI", "report attached", "delivered to the TsAMI",
                  "the MIS notified"):
        assert words in r.out, (words, r.out)
    url = r.out.strip().splitlines()[-1].split("open the study: ")[-1].strip()
    assert url.startswith(f"https://{region.nodes['gkb3-lami'].address}:"), r.out
    log = kontur("lab", "mis-log", "gkb3", "--json")
    told = [_json.loads(ln)["message"] for ln in log.out.splitlines() if ln.startswith("{")]
    accession = url.rstrip("/").split("/")[-2]
    for words in ("Исследование начато", "Исследование сохранено в ЛАМИ", "Заключение прикреплено",
                  "Исследование передано в ЦАМИ"):
        assert sum(1 for m in told if accession in m and words in m) == 1, (words, told[-4:])
    store = SecretStore(default_dir(example_lab.region_name, lab=True))
    ca, crt, key = operator_cert(store, region.region.title)

    def page(login: str, password: str) -> tuple[str, str]:
        p = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--max-time", "20", "--cacert", str(ca),
                            "--cert", str(crt), "--key", str(key), "-u", f"{login}:{password}", url],
                           stdout=subprocess.PIPE, text=True, timeout=60)
        body, _, code = p.stdout.rpartition("\n")
        return code, body
    code, body = page("fedorova", store.password("users/fedorova"))
    assert code == "200" and "Очаговое образование правого лёгкого" in body, (code, body[:500])
    assert page("fedorova", "wrong")[0] == "401"
    assert page("ivanova", store.password("users/ivanova"))[0] in ("401", "403")    # another hospital's
