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
    every node, and the JUnit report names each control by its ID per node."""
    from deploy_helpers import kontur

    report = tmp_path / "audit.xml"
    r = kontur("check", "--lab", "-i", str(EXAMPLE_INVENTORY), "--report", str(report), timeout=900)
    assert r.rc == 0, r.out
    xml = report.read_text()
    assert 'name="KONTUR-SEC-01[onco-lami]"' in xml and 'name="KONTUR-CFG-01[ref-web]"' in xml
    assert 'name="KONTUR-SEC-04[tsami]"' in xml        # the service account's REST, no password sent
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
        example_lab, deployed, region, tmp_path):
    """Issue 12's path on the deployed example region (`kontur lab walk`, as
    `./run demo` runs it): gkb3's MIS orders, its CT finds the order on its
    worklist, MPPS, images, the result with pathology; then under the
    pathology policy the study goes to the TsAMI and the MIS is told each
    step with the viewer URL.  That URL, through gkb3-lami's nginx (mutual
    TLS) with the hospital doctor's password, shows the report; another
    hospital's doctor and a wrong password are refused.  Headless Chromium
    with the certificate `kontur users issue` hands the doctor shows the
    images and the report (the screenshot is kept); the reference centre
    opens the TsAMI copy; another hospital's doctor opens it on the TsAMI
    only while it is shared with her hospital."""
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

    def fetch(link: str, login: str, password: str, cert: tuple = ()) -> tuple[str, str]:
        """(HTTP status, body) of ``link`` with the login and, if given, a client (certificate, key)."""
        tls = ["--cert", str(cert[0]), "--key", str(cert[1])] if cert else []
        p = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--max-time", "20", "--cacert", str(ca), *tls,
                            "-u", f"{login}:{password}", link], stdout=subprocess.PIPE, text=True, timeout=60)
        body, _, code = p.stdout.rpartition("\n")
        return code, body

    def page(login: str, password: str) -> tuple[str, str]:
        return fetch(url, login, password, (crt, key))
    code, body = page("fedorova", store.password("users/fedorova"))
    assert code == "200" and "Очаговое образование правого лёгкого" in body, (code, body[:500])
    assert page("fedorova", "wrong")[0] == "401"
    assert page("ivanova", store.password("users/ivanova"))[0] in ("401", "403")    # another hospital's
    # the doctor's browser: headless Chromium with the certificate `kontur users issue` hands her
    # (.p12 and its sheet), through gkb3-lami's nginx (mutual TLS), then her password
    import re

    from kontur.testing.browser import BrowserError, Chromium, keep_artefact
    from kontur.pki import user_cert
    issued = kontur("users", "issue", "fedorova", "--lab", "--out", str(tmp_path / "fedorova"))
    assert issued.rc == 0, issued.out
    sheet = (tmp_path / "fedorova" / "fedorova.txt").read_text()
    passphrase = re.search(r"passphrase: (\S+)\)", sheet).group(1)
    site = url.split("/kontur/")[0]
    with_password = url.replace("https://", f"https://fedorova:{store.password('users/fedorova')}@", 1)
    with Chromium() as browser:
        browser.trust_ca(ca)
        browser.import_p12(tmp_path / "fedorova" / "fedorova.p12", passphrase, site)
        html = browser.dom(with_password)
        assert "Очаговое образование правого лёгкого" in html, html[:2000]
        expected = int(re.search(r'data-expected="(\d+)"', html).group(1))
        assert expected >= 1 and f'data-images="{expected}"' in html, html[:2000]     # every image loaded
        shot = browser.screenshot(with_password, tmp_path / "viewer-gkb3-lami.png")
        assert shot.stat().st_size > 10_000
        keep_artefact(shot, "viewer-gkb3-lami.png")
        # the right certificate and a wrong password: no page
        try:
            wrong = browser.dom(url.replace("https://", "https://fedorova:wrong@", 1))
        except BrowserError as exc:
            wrong = str(exc)
        assert "Очаговое образование" not in wrong
    with Chromium() as bare:                             # no certificate: nginx refuses before any login
        bare.trust_ca(ca)
        try:
            refused = bare.dom(with_password)
        except BrowserError as exc:
            refused = str(exc)
        assert "Очаговое образование" not in refused and ("400" in refused or "ERR_" in refused), refused[:500]

    # the reference centre's radiologist opens the TsAMI copy through ref-web (the centre's front)
    ref = next(n for n, s in region.nodes.items() if s.role.value == "reference")
    ref_url = url.replace(site, f"https://{region.nodes[ref].address}:{region.ports(ref).https}", 1)
    code, body = fetch(ref_url, "sidorov", store.password("users/sidorov"))
    assert code == "200" and "Очаговое образование правого лёгкого" in body, (code, body[:500])

    # another hospital's radiologist on the TsAMI: refused until the study is shared with her hospital
    pair = user_cert(store, region.region.title, "ivanova")
    (tmp_path / "ivanova.crt").write_bytes(pair.cert_pem)
    (tmp_path / "ivanova.key").write_bytes(pair.key_pem)
    (tmp_path / "ivanova.key").chmod(0o600)
    tsami_url = url.replace(site, f"https://{region.nodes['tsami'].address}:{region.ports('tsami').https}", 1)

    def as_ivanova() -> tuple[str, str]:
        return fetch(tsami_url, "ivanova", store.password("users/ivanova"),
                     (tmp_path / "ivanova.crt", tmp_path / "ivanova.key"))
    code, body = as_ivanova()
    assert code == "403" and "not shared with it" in body, (code, body[:300])
    shared = kontur("study", "share", accession, "--with", "onco", "--days", "1", "--reason", "второе мнение",
                    "--lab")
    assert shared.rc == 0 and "shared study" in shared.out, shared.out
    code, body = as_ivanova()
    assert code == "200" and "Очаговое образование правого лёгкого" in body, (code, body[:300])
    share_id = re.search(r"\(share (\d+);", shared.out).group(1)
    assert kontur("study", "unshare", share_id, "--lab").rc == 0
    assert as_ivanova()[0] == "403"
    listed = kontur("study", "shares", "--json", "--lab")
    audit = _json.loads(listed.out[listed.out.index("{"):])["audit"]
    assert [a["what"] for a in audit][-3:] == ["shared", "opened through share", "share revoked"], audit
