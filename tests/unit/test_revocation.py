"""`kontur users revoke` (issue 15, TLS hygiene): the revocation list in the
secrets store, the CRL rendered onto every node, a new certificate afterwards."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from kontur import revocation
from kontur.inventory import load
from kontur.pki import ensure_ca, user_cert
from kontur.render import CRL_FILE, render_node
from kontur.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]


def kontur(*args: str, secrets: Path) -> subprocess.CompletedProcess:
    import os
    env = {**os.environ, "KONTUR_SECRETS": str(secrets)}
    return subprocess.run([sys.executable, "-m", "kontur", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


def _crl(bundle) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(bundle.file(CRL_FILE).content)


def test_a_revoked_certificate_is_in_every_nodes_crl_and_the_next_one_is_not(tmp_path):
    region = load()
    store = SecretStore(tmp_path / "secrets")
    title = region.region.title
    first = x509.load_pem_x509_certificate(user_cert(store, title, "ivanova").cert_pem)
    colleague = x509.load_pem_x509_certificate(user_cert(store, title, "sidorov").cert_pem)
    before = render_node(region, "onco-lami", store)
    assert list(_crl(before)) == []

    r = kontur("users", "revoke", "ivanova", "--reason", "laptop stolen, ticket 4711", secrets=tmp_path / "secrets")
    assert r.returncode == 0, r.stderr
    assert f"{first.serial_number:x} revoked" in r.stdout and "next `kontur deploy`" in r.stdout

    store = SecretStore(tmp_path / "secrets")
    ca = x509.load_pem_x509_certificate(ensure_ca(store, title).cert_pem)
    for node in ("tsami", "onco-lami", "ref-web"):
        crl = _crl(render_node(region, node, store))
        assert crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())
        assert [c.serial_number for c in crl] == [first.serial_number]
        assert crl.get_revoked_certificate_by_serial_number(colleague.serial_number) is None
        assert crl.next_update_utc - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=revocation.RESIGN_DAYS)
    # rendering again changes nothing (a deploy that follows changes no file)
    assert render_node(region, "onco-lami", store).file(CRL_FILE).content == \
        render_node(region, "onco-lami", store).file(CRL_FILE).content
    # issue hands her a new certificate, which the list does not name
    second = x509.load_pem_x509_certificate(user_cert(store, title, "ivanova").cert_pem)
    assert second.serial_number != first.serial_number
    assert not revocation.is_revoked(store, second.public_bytes(Encoding.PEM))
    assert [(x.login, x.reason) for x in revocation.revoked(store)] == [("ivanova", "laptop stolen, ticket 4711")]


def test_a_crl_running_short_is_signed_again_and_one_that_is_current_is_kept(tmp_path):
    store = SecretStore(tmp_path / "secrets")
    ca = ensure_ca(store, "test")
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    old = revocation.crl_pem(store, ca.cert_pem, ca.key_pem, now=now - dt.timedelta(days=revocation.CRL_DAYS - 10))
    assert revocation.crl_days_left(old, now) < 11
    fresh = revocation.crl_pem(store, ca.cert_pem, ca.key_pem, now=now)
    assert fresh != old and revocation.crl_days_left(fresh, now) > revocation.RESIGN_DAYS
    assert revocation.crl_pem(store, ca.cert_pem, ca.key_pem, now=now + dt.timedelta(days=1)) == fresh


def test_revoke_refuses_what_it_cannot_do_with_a_message(tmp_path):
    secrets = tmp_path / "secrets"
    never = kontur("users", "revoke", "ivanova", "--reason", "left", secrets=secrets)
    assert never.returncode == 2 and "no certificate was issued to 'ivanova'" in never.stderr, never.stderr
    assert "Traceback" not in never.stderr
    user_cert(SecretStore(secrets), load().region.title, "ivanova")
    blank = kontur("users", "revoke", "ivanova", "--reason", "  ", secrets=secrets)
    assert blank.returncode == 2 and "needs --reason" in blank.stderr, blank.stderr
    assert revocation.revoked(SecretStore(secrets)) == []
    missing = kontur("users", "revoke", "ivanova", secrets=secrets)
    assert missing.returncode == 2 and "--reason" in missing.stderr
    ok = kontur("users", "revoke", "ivanova", "--reason", "left", secrets=secrets)
    assert ok.returncode == 0, ok.stderr
    again = kontur("users", "revoke", "ivanova", "--reason", "left", secrets=secrets)
    assert again.returncode == 2 and "no certificate was issued" in again.stderr


def test_the_revocation_list_moves_with_the_store(tmp_path):
    from kontur.custody import export_store, import_store

    region = load()
    store = SecretStore(tmp_path / "a")
    pair = user_cert(store, region.region.title, "ivanova")
    revocation.revoke(store, "ivanova", pair.cert_pem, "left")
    data = export_store(store, region.region.name, region.region.title, "a long passphrase here")
    import_store(data, "a long passphrase here", "export", tmp_path / "b", region.region.name)
    assert revocation.revoked(SecretStore(tmp_path / "b")) == revocation.revoked(store)
