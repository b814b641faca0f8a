# SPDX-License-Identifier: AGPL-3.0-or-later
"""Rotating the store's secrets on purpose (kontur.rotation, `kontur secrets rotate`):
a password, a node's certificate, the CA in three phases; the audit log (issue 14)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from kontur import custody, rotation
from kontur.errors import InvalidInput
from kontur.inventory import load
from kontur.pki import operator_cert
from kontur.render import render_node
from kontur.render import orthanc as oc
from kontur.render import CRL_FILE
from kontur.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example" / "region.yaml"
PASSPHRASE = "a long enough passphrase"


@pytest.fixture(scope="module")
def region():
    return load(EXAMPLE)


@pytest.fixture
def store(tmp_path, region):
    s = SecretStore(tmp_path / "store")
    for node in region.nodes:           # every secret made, as after a first deploy
        render_node(region, node, s)
    return s


def kontur(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kontur", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=dict(os.environ, COLUMNS="200"))


def _file(bundle, path: str) -> bytes:
    return next(f for f in bundle.files if f.path == path).content


def _certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _record(bundle) -> str:
    return _file(bundle, custody.STORE_FILE).decode()


# --- passwords and the audit log -------------------------------------------------------------

def test_a_rotated_password_changes_that_key_only_and_reaches_the_node_rendering(region, store):
    key = "nodes/tsami/kontur"
    before = {k: store.get(k) for k in store.keys()}
    creds_before = json.loads(_file(render_node(region, "tsami", store), "/etc/orthanc/credentials.json"))
    entry = rotation.rotate_password(store, key, "leaked in ticket 4711")
    after = {k: SecretStore(store.dir).get(k) for k in store.keys()}
    assert after[key] != before[key] and len(after[key]) >= len(before[key])
    assert {k: v for k, v in after.items() if k != key} == {k: v for k, v in before.items() if k != key}
    creds = json.loads(_file(render_node(region, "tsami", SecretStore(store.dir)), "/etc/orthanc/credentials.json"))
    assert creds["RegisteredUsers"][oc.SERVICE_USER] == after[key] != creds_before["RegisteredUsers"][oc.SERVICE_USER]
    # the audit log: who, when, what, why -- never the value
    assert entry["key"] == key and entry["reason"] == "leaked in ticket 4711" and "@" in entry["who"]
    text = (store.dir / "pki" / "rotation" / rotation.AUDIT_FILE).read_text()
    assert before[key] not in text and after[key] not in text
    assert [r["what"] for r in rotation.log(store)] == ["password"]


def test_a_rotated_database_password_changes_the_orthanc_side_and_the_role_s_key(region, store):
    key = "nodes/tsami/postgresql"
    old = store.get(key)
    rotation.rotate_password(store, key, "drill")
    b = render_node(region, "tsami", SecretStore(store.dir))
    creds = json.loads(_file(b, "/etc/orthanc/credentials.json"))
    assert creds["PostgreSQL"]["Password"] == store.get(key) != old
    # deploys/postgresql reads the role's password under this key (the SCRAM verifier is made from it)
    assert b.facts["postgresql"]["password_key"] == key


def test_a_link_password_changes_on_both_ends(region, store):
    key = "links/onco-lami->tsami"
    rotation.rotate_password(store, key, "drill")
    new = store.get(key)
    lami = json.loads(_file(render_node(region, "onco-lami", store), "/etc/orthanc/credentials.json"))
    tsami = json.loads(_file(render_node(region, "tsami", store), "/etc/orthanc/credentials.json"))
    assert lami["OrthancPeers"]["tsami"]["Password"] == new
    assert tsami["RegisteredUsers"][oc.peer_login("onco-lami")] == new


def test_an_unknown_key_is_refused_with_the_list_of_keys(store):
    with pytest.raises(InvalidInput) as e:
        rotation.rotate_password(store, "nodes/tsami/nope", "x")
    assert "is no key of this store" in str(e.value) and "nodes/tsami/kontur" in str(e.value)
    with pytest.raises(InvalidInput, match="store's id"):
        rotation.rotate_password(store, "store/id", "x")
    with pytest.raises(InvalidInput, match="needs --reason"):
        rotation.rotate_password(store, "nodes/tsami/kontur", "  ")
    assert rotation.log(store) == []


def test_the_cli_rotates_lists_and_shows_the_log_without_a_value(store, tmp_path):
    args = ["-i", str(EXAMPLE), "--secrets", str(store.dir)]
    p = kontur("secrets", "rotate", "password", *args, "nodes/tsami/nope", "--reason", "x")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "nodes/tsami/kontur" in p.stderr, p.stderr
    p = kontur("secrets", "rotate", "password", *args, "nodes/tsami/kontur")
    assert p.returncode == 2 and "--reason" in p.stderr and "Traceback" not in p.stderr
    p = kontur("secrets", "rotate", "password", *args, "nodes/tsami/kontur", "--reason", "ticket 4711")
    assert p.returncode == 0 and "tsami" in p.stdout, p.stderr
    new = SecretStore(store.dir).get("nodes/tsami/kontur")
    p = kontur("secrets", "log", *args)
    assert p.returncode == 0 and "password nodes/tsami/kontur" in p.stdout and "ticket 4711" in p.stdout
    assert new not in p.stdout + p.stderr
    p = kontur("secrets", "rotate", "password", *args, "--list")
    assert "store/id" not in p.stdout and "links/onco-lami->tsami" in p.stdout and new not in p.stdout


# --- one node's certificate ----------------------------------------------------------------------

def test_a_rotated_node_certificate_is_new_from_the_same_ca_and_others_stay(region, store):
    old = _file(render_node(region, "tsami", store), oc.CERT_FILE)
    other = _file(render_node(region, "onco-lami", store), oc.CERT_FILE)
    old_key = (store.pki_dir / "nodes" / "tsami.key").read_bytes()
    entry = rotation.rotate_cert(store, region, "tsami", "disk lost")
    b = render_node(region, "tsami", store)
    new = _file(b, oc.CERT_FILE)
    assert new != old and (store.pki_dir / "nodes" / "tsami.key").read_bytes() != old_key
    ca = x509.load_pem_x509_certificate((store.pki_dir / "ca.crt").read_bytes())
    x509.load_pem_x509_certificate(new).verify_directly_issued_by(ca)
    assert entry["new_serial"] == f"{x509.load_pem_x509_certificate(new).serial_number:x}"
    assert _file(render_node(region, "onco-lami", store), oc.CERT_FILE) == other
    assert old_key.decode() not in (store.dir / "pki" / "rotation" / rotation.AUDIT_FILE).read_text()
    with pytest.raises(InvalidInput, match="no node of region"):
        rotation.rotate_cert(store, region, "nosuch", "x")


# --- the CA's change-over ----------------------------------------------------------------------

def _verify(bundle, cert_pem: bytes, tmp_path: Path) -> subprocess.CompletedProcess:
    """openssl's verdict, as nginx's (same library): the bundle's CAs and CRL file."""
    (tmp_path / "ca.crt").write_bytes(_file(bundle, oc.CA_FILE))
    (tmp_path / "crl.pem").write_bytes(_file(bundle, CRL_FILE))
    (tmp_path / "leaf.crt").write_bytes(cert_pem)
    return subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(tmp_path / "ca.crt"),
                           "-CRLfile", str(tmp_path / "crl.pem"), str(tmp_path / "leaf.crt")],
                          capture_output=True, text=True)


def test_the_ca_changes_over_in_three_phases(region, store, tmp_path):
    title = region.region.title
    b0 = render_node(region, "tsami", store)
    old_ca, old_cert, old_record = _file(b0, oc.CA_FILE), _file(b0, oc.CERT_FILE), _record(b0)
    foreign = _record(render_node(region, "tsami", SecretStore(tmp_path / "foreign")))

    # phase 1: both CAs trusted, the certificates still the old CA's
    e1 = rotation.start_ca(store, title, "drill")
    b1 = render_node(region, "tsami", store)
    cas = _certs(_file(b1, oc.CA_FILE))
    assert len(cas) == 2 and _file(b1, oc.CA_FILE).startswith(old_ca) and cas[0].subject != cas[1].subject
    assert _file(b1, oc.CERT_FILE) == old_cert and _record(b1) == old_record
    assert _file(b1, CRL_FILE).count(b"BEGIN X509 CRL") == 2
    assert _verify(b1, old_cert, tmp_path).returncode == 0
    with pytest.raises(InvalidInput, match="phase 1 of 3"):
        rotation.start_ca(store, title, "again")
    with pytest.raises(InvalidInput, match="--finish comes after --continue"):
        rotation.finish_ca(store, title, "too early", not_ready=[])
    with pytest.raises(InvalidInput, match="do not trust the new CA yet: tsami, onco-lami"):
        rotation.continue_ca(store, title, "x", not_ready=["tsami", "onco-lami"])

    # phase 2: every certificate from the new CA; the old CA still trusted
    rotation.continue_ca(store, title, "drill", not_ready=[])
    b2 = render_node(region, "tsami", store)
    new_cert = _file(b2, oc.CERT_FILE)
    assert new_cert != old_cert and len(_certs(_file(b2, oc.CA_FILE))) == 2
    x509.load_pem_x509_certificate(new_cert).verify_directly_issued_by(cas[1])
    assert json.loads(_record(b2))["ca_sha256"] == e1["new_ca"]
    # a node of the old certificate and one of the new trust each other: both CAs and both CRLs
    assert _verify(b2, old_cert, tmp_path).returncode == 0
    assert _verify(b2, new_cert, tmp_path).returncode == 0
    assert _verify(b1, new_cert, tmp_path).returncode == 0, "a phase-1 node accepts a phase-2 certificate"
    # deploy's custody check: a node deployed with the old CA is this store's predecessor; a foreign store is not
    ours = SecretStore(store.dir).identity(title)
    assert ours.ca_sha256 == e1["new_ca"] and ours.accepts == (e1["old_ca"],)
    assert custody.compare("tsami", old_record, ours) is None
    assert custody.compare("tsami", None, ours, old_ca.decode()) is None
    assert custody.compare("tsami", foreign, ours).what == "CA"
    same_ca_other_store = json.dumps({**json.loads(old_record), "store_id": "someone-elses"})
    assert custody.compare("tsami", same_ca_other_store, ours).what == "passwords"
    # the operator's client trusts both while nodes present either
    ca_file, *_ = operator_cert(store, title)
    assert len(_certs(ca_file.read_bytes())) == 2
    with pytest.raises(InvalidInput, match="still present a certificate of the old CA: gkb3-lami"):
        rotation.finish_ca(store, title, "x", not_ready=["gkb3-lami"])
    with pytest.raises(InvalidInput, match="phase 2 of 3"):
        rotation.continue_ca(store, title, "again", not_ready=[])

    # phase 3: the old CA dropped
    rotation.finish_ca(store, title, "drill", not_ready=[])
    b3 = render_node(region, "tsami", store)
    assert _file(b3, oc.CA_FILE) == (store.pki_dir / "ca.crt").read_bytes()
    assert _certs(_file(b3, oc.CA_FILE)) == [cas[1]] and _file(b3, oc.CERT_FILE) == new_cert
    assert _file(b3, CRL_FILE).count(b"BEGIN X509 CRL") == 1
    assert _verify(b3, old_cert, tmp_path).returncode != 0
    assert custody.compare("tsami", old_record, SecretStore(store.dir).identity(title)).what == "CA"
    assert not (store.dir / "pki" / "rotation" / f"{rotation.PREVIOUS_CA}.key").exists()
    assert [(r["what"], r.get("phase")) for r in rotation.log(store)] == [("ca", 1), ("ca", 2), ("ca", 3)]
    # and a new change-over may start
    rotation.start_ca(store, title, "next year")


def test_a_revoked_browser_certificate_stays_revoked_through_the_change_over(region, store, tmp_path):
    from kontur import pki, revocation
    title = region.region.title
    lost = pki.user_cert(store, title, "ivanova")
    revocation.revoke(store, "ivanova", lost.cert_pem, "laptop lost")
    kept = pki.user_cert(store, title, "sidorov")
    rotation.start_ca(store, title, "drill")
    b1 = render_node(region, "tsami", store)
    assert _verify(b1, lost.cert_pem, tmp_path).returncode != 0
    assert _verify(b1, kept.cert_pem, tmp_path).returncode == 0
    rotation.continue_ca(store, title, "drill", not_ready=[])
    assert rotation.old_user_certs(store) == ["ivanova", "sidorov"]
    b2 = render_node(region, "tsami", store)
    assert _verify(b2, lost.cert_pem, tmp_path).returncode != 0
    assert _verify(b2, kept.cert_pem, tmp_path).returncode == 0
    renewed = pki.user_cert(store, title, "sidorov")
    assert renewed.cert_pem != kept.cert_pem and _verify(b2, renewed.cert_pem, tmp_path).returncode == 0
    assert rotation.old_user_certs(store) == ["ivanova"]


def test_a_change_over_and_its_log_travel_with_the_export(region, store, tmp_path):
    title = region.region.title
    rotation.rotate_password(store, "users/ivanova", "drill")
    rotation.start_ca(store, title, "drill")
    data = custody.export_store(store, region.region.name, title, PASSPHRASE)
    custody.import_store(data, PASSPHRASE, "export", tmp_path / "second", region.region.name)
    second = SecretStore(tmp_path / "second")
    assert rotation.changeover(second) == rotation.changeover(store)
    assert rotation.log(second) == rotation.log(store)
    assert _file(render_node(region, "tsami", second), oc.CA_FILE) == _file(render_node(region, "tsami", store),
                                                                           oc.CA_FILE)


def test_the_cli_enforces_the_phase_order_without_a_traceback(store):
    args = ["-i", str(EXAMPLE), "--secrets", str(store.dir)]
    p = kontur("secrets", "rotate", "ca", *args, "--continue", "--reason", "x")
    assert p.returncode == 2 and "no CA change-over is under way" in p.stderr and "Traceback" not in p.stderr
    p = kontur("secrets", "rotate", "ca", *args)
    assert p.returncode == 2 and "--reason" in p.stderr
    p = kontur("secrets", "rotate", "ca", *args, "--reason", "drill")
    assert p.returncode == 0 and "phase 1 of 3" in p.stdout, p.stderr
    p = kontur("secrets", "rotate", "ca", *args, "--finish", "--reason", "x")
    assert p.returncode == 2 and "--finish comes after --continue" in p.stderr and "Traceback" not in p.stderr


def test_forcing_a_phase_past_nodes_not_ready_names_them_in_the_log(region, store):
    title = region.region.title
    rotation.start_ca(store, title, "drill")
    rotation.continue_ca(store, title, "the gkb3 link is down for a week", not_ready=["gkb3-lami"], forced=True)
    assert rotation.changeover(store).phase == rotation.PHASE_REISSUE
    assert rotation.log(store)[-1]["forced_past"] == ["gkb3-lami"]
    # the old CA kept aside for the bundle, the new one issuing
    previous = (store.dir / "pki" / "rotation" / f"{rotation.PREVIOUS_CA}.crt").read_bytes()
    assert previous != (store.pki_dir / "ca.crt").read_bytes()
