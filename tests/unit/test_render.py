"""Rendering: deterministic, golden files, the security baseline in every file."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kontur.inventory import load, load_text
from kontur.regiongen import generate_region
from kontur.render import render_node, render_region
from kontur.custody import STORE_FILE
from kontur.secrets import SecretStore

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
UPDATE = os.environ.get("KONTUR_UPDATE_GOLDEN") == "1"


@pytest.fixture
def store(tmp_path) -> SecretStore:
    return SecretStore(tmp_path / "secrets")


def files_of(bundle) -> dict[str, bytes]:
    return {f.path: f.content for f in bundle.files}


def test_rendering_is_deterministic(store, tmp_path):
    region = load()
    first = {b.node: files_of(b) for b in render_region(region, store)}
    second = {b.node: files_of(b) for b in render_region(load(), SecretStore(store.dir))}
    assert first == second
    # and on disk, byte for byte
    a, b = tmp_path / "a", tmp_path / "b"
    for bundle in render_region(region, store):
        bundle.write(a)
        bundle.write(b)
    for f in a.rglob("*"):
        if f.is_file():
            assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()


@pytest.mark.parametrize("node", ["tsami", "onco-lami", "crb-gw", "ref-web", "research"])
def test_golden_files(store, node):
    """Non-secret files match tests/golden/<node>/ (KONTUR_UPDATE_GOLDEN=1 rewrites them)."""
    bundle = render_node(load(), node, store)
    checked = 0
    for f in bundle.files:
        if f.secret or f.path.endswith((".crt", "/crl.pem")) or f.path == STORE_FILE or f.path.startswith("/usr/lib/kontur/"):
            continue  # secrets and the store's record vary per store; /usr/lib/kontur is copied verbatim (see below)
        golden = GOLDEN / node / f.path.lstrip("/")
        if UPDATE:
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_bytes(f.content)
        assert golden.exists(), f"no golden file {golden}; run with KONTUR_UPDATE_GOLDEN=1 and review the diff"
        assert f.content.decode() == golden.read_text(), f"{node}:{f.path} differs from {golden}"
        checked += 1
    assert checked >= 2


def test_static_files_are_shipped_verbatim(store):
    from kontur.render import LUA, PLUGINS, SCRIPTS
    files = files_of(render_node(load(), "onco-lami", store))
    assert files["/usr/lib/kontur/lua/roles.lua"] == (LUA / "roles.lua").read_bytes()
    assert files["/usr/lib/kontur/bin/check-orthanc-config"] == (SCRIPTS / "check-orthanc-config").read_bytes()
    assert files["/usr/lib/kontur/plugins/kontur_entry.py"] == (PLUGINS / "kontur_entry.py").read_bytes()


def test_security_baseline_on_every_archive(store):
    region = load()
    for bundle in render_region(region, store):
        if bundle.role == "reference":
            continue
        files = files_of(bundle)
        core = json.loads(files["/etc/orthanc/orthanc.json"])
        dicom = json.loads(files["/etc/orthanc/dicom.json"])
        creds = json.loads(files["/etc/orthanc/credentials.json"])
        assert core["AuthenticationEnabled"] is True
        assert core["RemoteAccessAllowed"] is False
        assert core["SslEnabled"] is False
        assert core["ExecuteLuaEnabled"] is False
        assert core["RestApiWriteToFileSystemEnabled"] is False
        assert core["DefaultEncoding"] == "Utf8"
        assert dicom["DicomCheckCalledAet"] is True
        assert dicom["DicomAlwaysAllowStore"] is False
        assert dicom["DicomAlwaysAllowEcho"] is False
        users = creds["RegisteredUsers"]
        assert "orthanc" not in users and users, "Orthanc would create orthanc:orthanc without users"
        assert all(len(p) >= 24 for p in users.values())
        cred_file = bundle.file("/etc/orthanc/credentials.json")
        assert cred_file.mode == "0600" and cred_file.owner == "orthanc" and cred_file.secret
        # no key is defined in two files: Orthanc refuses that
        keys = [k for p, c in files.items() if p.startswith("/etc/orthanc/") and p.endswith(".json")
                for k in json.loads(c)]
        assert len(keys) == len(set(keys))


def test_lami_knows_its_modalities_and_peer(store):
    region = load()
    files = files_of(render_node(region, "onco-lami", store))
    dicom = json.loads(files["/etc/orthanc/dicom.json"])
    # its hospital's modalities, and the HL7 service on the node itself (it stores the reports: issue 12)
    assert {m["AET"] for m in dicom["DicomModalities"].values()} == \
        {m.aet for m in region.hospitals["onco"].modalities} | {"KONTUR_HL7"}
    assert all(m["AllowStore"] and not m["AllowMove"] for m in dicom["DicomModalities"].values())
    peers = json.loads(files["/etc/orthanc/credentials.json"])["OrthancPeers"]
    assert list(peers) == ["tsami"]
    assert peers["tsami"]["Url"] == "https://10.42.0.10:443/"
    assert peers["tsami"]["Username"] == "peer-onco-lami"
    # the TsAMI accepts exactly that login with that password
    tsami_users = json.loads(files_of(render_node(region, "tsami", store))["/etc/orthanc/credentials.json"])["RegisteredUsers"]
    assert tsami_users["peer-onco-lami"] == peers["tsami"]["Password"]


def test_firewall_opens_exactly_the_declared_ports(store):
    region = load()
    nft = files_of(render_node(region, "onco-lami", store))["/etc/nftables.conf"].decode()
    assert "policy drop" in nft
    dicom_rule = next(l for l in nft.splitlines() if "dport 4242" in l)
    for m in region.hospitals["onco"].modalities:
        assert m.host in dicom_rule
    assert "10.42.2.21" not in nft  # another hospital's CT
    assert "dport 5432" not in nft and "dport 8042" not in nft


def test_a_region_the_tests_never_saw(store):
    """Different hospital count, names, ports: renders without code changes."""
    region = load_text(generate_region(12, gateways=3, dicom_port=11112, https_port=8443))
    bundles = render_region(region, store)
    assert len(bundles) == len(region.nodes) == 18
    lami = next(b for b in bundles if b.node == "h01-pacs")
    dicom = json.loads(files_of(lami)["/etc/orthanc/dicom.json"])
    assert dicom["DicomPort"] == 11112 and dicom["DicomAet"] == "H01_PACS"
    assert "listen 8443 ssl" in files_of(lami)["/etc/nginx/sites-available/kontur.conf"].decode()
    gw = next(b for b in bundles if b.node == "h14-gw")
    assert "postgresql" not in gw.packages


def test_secrets_are_generated_once_and_private(store):
    region = load()
    render_region(region, store)
    before = (store.dir / "secrets.json").read_bytes()
    render_region(region, SecretStore(store.dir))
    assert (store.dir / "secrets.json").read_bytes() == before
    assert oct(store.dir.stat().st_mode & 0o777) == "0o700"
    assert oct((store.dir / "secrets.json").stat().st_mode & 0o777) == "0o600"
    assert oct((store.dir / "pki" / "ca.key").stat().st_mode & 0o777) == "0o600"


def test_store_readable_by_others_is_refused(tmp_path):
    from kontur.errors import OperationFailed
    d = tmp_path / "s"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(OperationFailed, match="readable by others"):
        SecretStore(d)


def test_golden_lab_package_source(store):
    """In the lab the bundle carries the lab's repository instead of the region's mirror
    (tests/golden/lab/<node>/; the key is the lab's own, not golden); nothing else changes."""
    from kontur.render.system import APT_SOURCE, LAB_KEYRING, LAB_SOURCE, AptRepository
    repo = AptRepository(keyring=b"the lab's key",
                         source_line="deb [signed-by=/etc/apt/keyrings/kontur-lab.gpg] http://198.18.0.1:8799/ ./")
    lab = files_of(render_node(load(), "onco-lami", store, apt=repo))
    prod = files_of(render_node(load(), "onco-lami", store))
    golden = GOLDEN / "lab" / "onco-lami" / LAB_SOURCE.lstrip("/")
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(lab[LAB_SOURCE])
    assert golden.exists(), f"no golden file {golden}; run with KONTUR_UPDATE_GOLDEN=1 and review the diff"
    assert lab[LAB_SOURCE].decode() == golden.read_text()
    assert lab[LAB_KEYRING] == b"the lab's key"
    assert {p: c for p, c in lab.items() if not p.startswith("/etc/apt/")} == \
        {p: c for p, c in prod.items() if not p.startswith("/etc/apt/")}
    assert APT_SOURCE not in lab
    with pytest.raises(ValueError, match="not one line"):
        render_node(load(), "onco-lami", store, apt=AptRepository(b"k", "deb http://x/ ./\nTrusted: yes"))
