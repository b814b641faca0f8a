# SPDX-License-Identifier: AGPL-3.0-or-later
"""The whole example region deploys in the lab: eight nodes of every role,
from clean hosts; a re-deploy changes nothing; every archive answers its
inventory modalities; the reference centre's users reach the TsAMI through
the centre's nginx (which presents the node's regional client certificate)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kontur.inventory import EXAMPLE_INVENTORY, load
from kontur.lab.state import lab_region
from kontur.pki import operator_cert
from kontur.secrets import SecretStore, default_dir

from deploy_helpers import deploy, in_netns

pytestmark = pytest.mark.lab
REPO = Path(__file__).resolve().parents[2]


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


def _junit_is_valid(path) -> str:
    import xmlschema
    xmlschema.XMLSchema(str(REPO / "tests" / "data" / "junit.xsd")).validate(str(path))
    return path.read_text()


def test_check_and_audit_pass_on_the_fresh_region(example_lab, deployed, tmp_path):
    """``kontur check --lab``: every node green; ``kontur audit --lab``: every
    control passes, the JUnit names each control by its ID per node and is
    valid against the schema CI tools read, and the region's page opens in
    Chromium (the screenshot is kept)."""
    from deploy_helpers import kontur
    from kontur.testing.browser import Chromium, keep_artefact

    prom = tmp_path / "kontur.prom"
    r = kontur("check", "--lab", "-i", str(EXAMPLE_INVENTORY), "--json", "--prometheus", str(prom), timeout=300)
    assert r.rc == 0, r.out
    doc = json.loads(r.out)
    assert doc["level"] == "green" and len(doc["nodes"]) == 8, r.out
    assert 'kontur_check_level{node="gkb3-lami",role="lami"} 0' in prom.read_text()
    report = tmp_path / "audit"
    r = kontur("audit", "--lab", "-i", str(EXAMPLE_INVENTORY), "--report", str(report), timeout=900)
    assert r.rc == 0, r.out[-4000:]
    xml = _junit_is_valid(report / "junit.xml")
    for name in ("KONTUR-SEC-01[onco-lami]", "KONTUR-CFG-01[ref-web]", "KONTUR-SEC-04[tsami]",
                 "KONTUR-NET-03[crb-gw]", "KONTUR-REG-02[gkb3-lami]", "KONTUR-DCM-01[research]"):
        assert f'name="{name}"' in xml, name
    assert 'failures="0"' in xml and 'errors="0"' in xml
    with Chromium() as browser:
        assert "compliant" in browser.dom((report / "index.html").as_uri())
        keep_artefact(browser.screenshot((report / "index.html").as_uri(), tmp_path / "a.png"), "audit-region.png")


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


def test_a_revoked_doctors_certificate_is_refused_after_the_next_deploy_and_a_colleagues_still_works(
        example_lab, deployed, region, tmp_path):
    """`kontur users revoke fedorova`, then `kontur deploy`: gkb3-lami's nginx
    refuses her certificate (400) while a colleague's still reaches Orthanc's
    login (401 without a password), and the certificate `users issue` hands
    her next works."""
    from deploy_helpers import kontur
    from kontur.pki import user_cert

    store = SecretStore(default_dir(example_lab.region_name, lab=True))
    title = region.region.title
    spec = region.nodes["gkb3-lami"]
    url = f"https://{spec.address}:{region.ports('gkb3-lami').https}/system"
    ca = operator_cert(store, title)[0]

    def files(login: str, tag: str) -> tuple[Path, Path]:
        pair = user_cert(store, title, login)
        crt, key = tmp_path / f"{tag}.crt", tmp_path / f"{tag}.key"
        crt.write_bytes(pair.cert_pem)
        key.write_bytes(pair.key_pem)
        return crt, key

    def status(cert: tuple[Path, Path]) -> str:
        p = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                            "--cacert", str(ca), "--cert", str(cert[0]), "--key", str(cert[1]), url],
                           stdout=subprocess.PIPE, text=True, timeout=60)
        return p.stdout

    hers, colleague = files("fedorova", "fedorova-old"), files("archivist", "archivist")
    assert (status(hers), status(colleague)) == ("401", "401")
    r = kontur("users", "revoke", "fedorova", "--lab", "--reason", "laptop stolen (lab test)")
    assert r.rc == 0, r.out
    assert status(hers) == "401"                        # nothing on the nodes changes before the deploy
    again = deploy(EXAMPLE_INVENTORY)
    assert again.rc == 0 and again.failed == 0 and again.changed > 0, again.out
    assert (status(hers), status(colleague)) == ("400", "401")
    assert status(files("fedorova", "fedorova-new")) == "401"


def test_the_onco_ct_feed_puts_a_de_identified_copy_on_the_research_node_and_only_the_miac_can_reidentify(
        example_lab, deployed, region, tmp_path):
    """Issue 16 on the deployed example region: a CT study of the oncology centre, sent by its CT,
    replicated to the TsAMI, reaches the research node de-identified by `kontur research export` (the
    report SR held back: the feed does not clean structured content); the research node holds no
    key material; the archivist re-identifies the pseudonym, a radiologist is refused, both audited;
    the archivist has the original study sent back to the oncology centre's LAMI, audited."""
    import io

    import pydicom

    from deploy_helpers import kontur, on_host
    from kontur import nodeapi
    from kontur.testing.dicom import package_study
    from kontur.testing.orthanc import wait_for
    study = package_study(report=True)
    files = study.write(tmp_path / "onco")
    r = kontur("lab", "send", "ONCO_CT1", *map(str, files))
    assert r.rc == 0, r.out
    inv = load(EXAMPLE_INVENTORY)
    tsami = nodeapi.client_for(inv, "tsami", lab=True)
    research = nodeapi.client_for(inv, "research", lab=True)

    def at_tsami():
        found = tsami.post("tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study.study_uid}})
        return found and len(tsami.get(f"studies/{found[0]}/instances")) == len(study.instances)
    wait_for(at_tsami, 300, interval=2, message="the oncology centre's study at the TsAMI")
    # the timer sends it once it is stable there (tests/orthanc/test_research_orthanc.py runs that path);
    # here the operator's command sends it now
    assert on_host(example_lab, "tsami", "systemctl is-active kontur-research.timer").stdout.strip() == "active"
    r = kontur("research", "export", "onco-ct", "--lab")
    import re
    m = re.search(r"(\d+) instance\(s\) delivered, (\d+) already there", r.out)
    assert r.rc == 0 and m and int(m[1]) + int(m[2]) >= 1, r.out     # the timer may have sent it meanwhile
    assert "structured content (SR)" in r.out, r.out                   # held back at every look

    def copies():
        out = []
        for s in research.get("studies"):
            for i in research.get(f"studies/{s}/instances"):
                ds = pydicom.dcmread(io.BytesIO(research.get_raw(f"instances/{i['ID']}/file")))
                if ds.get("PatientIdentityRemoved") == "YES" and ds.Modality == "CT":
                    out.append(ds)
        return out
    got = copies()
    assert got, "no de-identified copy on the research node"
    copy = got[0]
    raw = b"".join(research.get_raw(f"instances/{i}/file") for i in research.get("instances"))
    assert "Иванов".encode() not in raw and study.patient_id.encode() not in raw and study.study_uid.encode() not in raw
    pseudonym = str(copy.PatientID)
    assert pseudonym.startswith("R42-") and str(copy.StudyInstanceUID).startswith("2.25.")
    assert not any(ds.Modality == "SR" for ds in got)

    # the research node holds no key material: no secrets file, no key map, not the key anywhere
    key = SecretStore(default_dir(example_lab.region_name, lab=True)).password("research/key", 32)
    p = on_host(example_lab, "research", f"test ! -e /etc/kontur/research.json && test ! -e /var/lib/kontur/research "
                                          f"&& ! grep -rqsF -- '{key}' /etc /var/lib /usr/lib/kontur && echo clean")
    assert p.stdout.strip() == "clean", p.stdout + p.stderr

    r = kontur("research", "reidentify", pseudonym, "--reason", "возврат в клиническую практику",
               "--as", "archivist", "--lab")
    assert r.rc == 0 and "Иванов^Пётр" in r.out and study.patient_id in r.out, r.out
    r = kontur("research", "reidentify", pseudonym, "--reason", "любопытство", "--as", "ivanova", "--lab")
    assert r.rc == 1 and "refused" in r.out and "Иванов" not in r.out, r.out
    r = kontur("research", "audit", "--lab", "--json")
    trail = [json.loads(ln) for ln in r.out.splitlines() if ln.startswith("{")]
    assert [(t["who"], t["answer"].split(":")[0]) for t in trail[-2:]] == [("archivist", "found"),
                                                                          ("ivanova", "refused")], r.out

    # seed 001: the image returns to clinical use -- the oncology centre's LAMI lost its copy, and the
    # archivist has the TsAMI send the original back there (its Orthanc peer, mutual TLS), audited
    onco = nodeapi.client_for(inv, "onco-lami", lab=True)
    query = {"Level": "Study", "Query": {"StudyInstanceUID": study.study_uid}}
    for sid in onco.post("tools/find", query):
        onco.request("DELETE", f"studies/{sid}")
    assert onco.post("tools/find", query) == []
    r = kontur("research", "reidentify", pseudonym, "--reason", "повторное обращение пациента", "--as",
               "archivist", "--send-to", "onco-lami", "--lab")
    assert r.rc == 0 and f"the original study {study.study_uid}" in r.out and "to onco-lami" in r.out, r.out
    (back,) = onco.post("tools/find", query)
    (there,) = tsami.post("tools/find", query)
    assert len(onco.get(f"studies/{back}/instances")) == len(tsami.get(f"studies/{there}/instances"))
    r = kontur("research", "audit", "--lab", "--json")
    trail = [json.loads(ln) for ln in r.out.splitlines() if ln.startswith("{")]
    assert trail[-1]["who"] == "archivist" and trail[-1]["answer"].startswith(
        f"sent: the original study {study.study_uid}") and "to onco-lami" in trail[-1]["answer"], r.out


#: the test feed: the research corpus's hospitals, its profile (kontur.testing.research_actions), and only
#: studies of the corpus's date (the studies earlier tests sent are dated today)
TRIAL_FEED = """    trial:
      destination: research
      select:
        hospitals: [onco, gkb3]
        until: "20260630"
      profile:
        options: [retain_modified_dates, clean_descriptors, clean_structured_content]
        safe_private:
          - {tag: "0019,1001", creator: KONTUR_SAFE}
"""


def test_the_corpus_goes_through_a_feed_into_the_lab_research_node_with_no_leak(
        example_lab, deployed, region, tmp_path, capsys):
    """Issue 16's corpus (identity planted in 150 places across CT, MR, US, SR, SC, a PDF and private
    elements, Cyrillic and Latin) at the lab's TsAMI, through a feed of the inventory (the example with the
    test feed in place of onco-ct, deployed to the TsAMI) into the research node over the TsAMI's mTLS
    peer: 0 leaks by the independent byte scanner, every PS3.15 action of the profile applied (the table
    printed), the burned-in-risk instances and the PDF held back, one pseudonym for the patient of two
    hospitals, and a second run sends nothing new: the same pseudonyms and UIDs."""
    import io
    import re
    import shutil

    import pydicom

    from deploy_helpers import kontur, on_host
    from kontur import nodeapi
    from kontur.testing.research import build_corpus, raw_leaks
    from kontur.testing.research_actions import action_table

    variant_dir = tmp_path / "inventory"
    shutil.copytree(EXAMPLE_INVENTORY.parent, variant_dir)
    variant = variant_dir / EXAMPLE_INVENTORY.name
    text = variant.read_text(encoding="utf-8")
    start = text.index("    onco-ct:\n")
    end = text.index("\n\n", start) + 1
    variant.write_text(text[:start] + TRIAL_FEED + text[end:], encoding="utf-8")
    inv = load(variant)
    assert list(inv.research.feeds) == ["trial"]
    tsami = nodeapi.client_for(inv, "tsami", lab=True)
    research = nodeapi.client_for(inv, "research", lab=True)
    corpus = build_corpus()
    uploaded: set[str] = set()
    try:
        r = deploy(variant, "--limit", "tsami")
        assert r.rc == 0, r.out
        for item in corpus.items:
            answer = tsami.request_raw_post("instances", item.data)
            uploaded.add(answer["ParentStudy"])

        def export():
            r = kontur("research", "export", "trial", "--lab", "-i", str(variant))
            m = re.search(r"(\d+) selected, (\d+) instance\(s\) delivered, (\d+) already there, (\d+) held back", r.out)
            assert r.rc == 0 and m, r.out
            return r, [int(g) for g in m.groups()]

        r, (selected, delivered, already, held) = export()
        want = [i for i in corpus.items if i.expect == "delivered"]
        assert selected == len({i.study for i in corpus.items if i.hospital in ("onco", "gkb3")}), r.out
        assert delivered + already == len(want), r.out              # the timer may have sent some meanwhile
        reasons = re.findall(r"^  held back \S+ / \S+: (.*)$", r.out, re.M)
        assert held == len(reasons) == sum(i.expect == "held" for i in corpus.items), r.out
        assert sum("encapsulated document" in x for x in reasons) == 1, reasons
        assert sum("burned-in identity" in x for x in reasons) == 2, reasons

        # the key map at the TsAMI: research study -> original (read on the node, as the service does)
        p = on_host(example_lab, "tsami", "python3 -c \"import json, sqlite3; print(json.dumps(dict(sqlite3.connect("
                                          "'/var/lib/kontur/research/keymap.sqlite').execute("
                                          "'SELECT new_study_uid, original_study_uid FROM studies'))))\"")
        assert p.returncode == 0, p.stderr
        study_map = json.loads(p.stdout)
        originals = [pydicom.dcmread(io.BytesIO(i.data)) for i in want]
        ours = {str(o.StudyInstanceUID) for o in originals}
        files = {}
        for s in research.get("studies"):
            uid = research.get(f"studies/{s}")["MainDicomTags"]["StudyInstanceUID"]
            if study_map.get(uid) in ours:
                for i in research.get(f"studies/{s}/instances"):
                    files[i["ID"]] = research.get_raw(f"instances/{i['ID']}/file")
        assert len(files) == len(want), f"{len(files)} copies of the corpus on the research node, {len(want)} expected"
        leaks = {i: raw_leaks(data, corpus) for i, data in files.items()}
        assert not any(leaks.values()), {i: f for i, f in leaks.items() if f}

        copies = [pydicom.dcmread(io.BytesIO(data)) for data in files.values()]
        patient_of = {str(o.StudyInstanceUID): corpus.studies[i.study][1] for o, i in zip(originals, want)}
        hospitals_of: dict[str, set[str]] = {}
        pseudonyms: dict[str, set[str]] = {}
        for c in copies:
            original = study_map[str(c.StudyInstanceUID)]
            pseudonyms.setdefault(patient_of[original], set()).add(str(c.PatientID))
            hospitals_of.setdefault(patient_of[original], set()).update(
                i.hospital for o, i in zip(originals, want) if str(o.StudyInstanceUID) == original)
        assert all(len(v) == 1 for v in pseudonyms.values()), pseudonyms
        assert len({next(iter(v)) for v in pseudonyms.values()}) == len(pseudonyms), pseudonyms
        assert any(len(h) == 2 for h in hospitals_of.values()), hospitals_of   # one patient of two hospitals
        rows, failed = action_table(originals, copies, study_map)
        with capsys.disabled():
            print("\nPS3.15 actions on the corpus in the lab (attribute | required | applied | example):")
            for row in rows:
                print(" | ".join(str(x) for x in row))
        assert not failed, f"actions not applied: {failed}"

        # a second run: nothing new; the research node holds the same instances (same pseudonyms and UIDs)
        before = set(research.get("instances"))
        r, (_, delivered, already, _) = export()
        assert delivered == 0 and already == len(want), r.out
        assert set(research.get("instances")) == before
    finally:
        for study in uploaded:                 # the clinical archive as the next test finds it
            tsami.request("DELETE", f"studies/{study}")
        back = deploy(EXAMPLE_INVENTORY, "--limit", "tsami")
        assert back.rc == 0, back.out


def test_check_and_audit_catch_each_fault_made_on_purpose(example_lab, deployed, region, tmp_path):
    """Issue 13's faults, made at once on six nodes (tests/deploy/faults.py):
    Orthanc stopped and a disk over its critical threshold; a link cut; a
    device removed from a node's configuration by hand; orthanc:orthanc
    re-enabled; TLS switched off at the TsAMI; a study undelivered past its
    deadline; a certificate 10 days from expiry.  ``kontur check`` shows each,
    with the hospital's responsible person on its red rows; ``kontur audit``
    fails the control named for each.  Last in the module: the lab is thrown
    away after it."""
    import faults
    from deploy_helpers import kontur

    faults.make_all(example_lab, region, tmp_path)
    r = kontur("check", "--lab", "-i", str(EXAMPLE_INVENTORY), "--json", "--timeout", "8", timeout=300)
    assert r.rc == 1, r.out
    doc = json.loads(r.out)
    for node, expected in faults.EXPECTED.items():
        found = doc["nodes"][node]
        assert found["level"] == "red", (node, found)
        text = "\n".join(f["message"] for f in found["findings"])
        for words, _control in expected:
            if words:                       # "": the audit's alone to find
                assert words in text, f"{node}: {words!r} not in {text}"
    table = kontur("check", "--lab", "-i", str(EXAMPLE_INVENTORY), "--timeout", "8", timeout=300)
    assert table.rc == 1
    for node in faults.EXPECTED:
        hospital = region.hospital_of(node)
        person = (region.hospitals[hospital].staff if hospital else region.centre.staff)[0]
        rows = [ln for ln in table.out.splitlines() if "red" in ln and person.name in ln]
        assert rows, f"{node}: no red row names {person.name}:\n{table.out}"
    assert "green" not in doc["nodes"]["mammo-gw"]["level"]
    # the audit reads every node over SSH: the mobile unit back on the network first
    assert kontur("lab", "heal", "mammo-gw", timeout=60).rc == 0
    report = tmp_path / "audit"
    r = kontur("audit", "--lab", "-i", str(EXAMPLE_INVENTORY), "--report", str(report), timeout=900)
    assert r.rc == 1, r.out[-3000:]
    failed = {c["name"] for c in json.loads((report / "report.json").read_text())["controls"]
              if c["outcome"] in ("failed", "error")}
    for node, expected in faults.EXPECTED.items():
        for _words, control in expected:
            if control:
                assert f"{control}[{node}]" in failed, f"{control}[{node}] not among the findings {sorted(failed)}"
    _junit_is_valid(report / "junit.xml")
    page = (report / "crb.html").read_text()
    assert "KONTUR-REG-02[crb-gw]" in page and "Evidence" in page
    from kontur.testing.browser import Chromium, keep_artefact
    with Chromium() as browser:
        keep_artefact(browser.screenshot((report / "crb.html").as_uri(), tmp_path / "c.png"), "audit-crb-findings.png")
