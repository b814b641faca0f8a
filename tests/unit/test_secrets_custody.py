# SPDX-License-Identifier: AGPL-3.0-or-later
"""Which store a region belongs to (the record every node keeps), and the store
moved between operators' machines as one encrypted file (issue 14)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kontur import custody
from kontur.errors import InvalidInput
from kontur.inventory import load
from kontur.render import render_node
from kontur.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventory" / "example" / "region.yaml"
PASSPHRASE = "a long enough passphrase"


def kontur(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kontur", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env=dict(os.environ, COLUMNS="200"))


@pytest.fixture(scope="module")
def region():
    return load(EXAMPLE)


@pytest.fixture
def passphrase(tmp_path) -> Path:
    p = tmp_path / "passphrase"
    p.write_text(PASSPHRASE + "\n")
    return p


def _record(region, store, node="tsami") -> dict:
    b = render_node(region, node, store)
    f = next(f for f in b.files if f.path == custody.STORE_FILE)
    assert f.mode == "0644" and not f.secret
    return json.loads(f.content)


def test_every_node_records_the_store_it_is_rendered_from(region, tmp_path):
    store = SecretStore(tmp_path / "a")
    rec = _record(region, store)
    ca = (store.pki_dir / "ca.crt").read_bytes()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    assert rec["ca_sha256"] == x509.load_pem_x509_certificate(ca).fingerprint(hashes.SHA256()).hex(":").upper()
    assert rec["region"] == region.region.name
    # the same store renders the same record on every node, every time
    assert _record(region, store, "onco-lami") == rec
    assert _record(region, SecretStore(tmp_path / "a")) == rec
    # another store (a second machine, or a store lost and made anew) another one
    assert _record(region, SecretStore(tmp_path / "b"))["ca_sha256"] != rec["ca_sha256"]


def test_the_record_tells_a_new_ca_from_new_passwords(region, tmp_path):
    store = SecretStore(tmp_path / "a")
    ours = store.identity(region.region.title)
    rec = json.dumps(custody.record(region.region.name, ours))
    assert custody.compare("tsami", rec, ours) is None
    assert custody.compare("tsami", None, ours) is None          # never deployed: nothing to protect
    # the passwords file lost, the CA kept: same CA, another store id
    (tmp_path / "a" / "secrets.json").unlink()
    again = SecretStore(tmp_path / "a").identity(region.region.title)
    m = custody.compare("tsami", rec, again)
    assert (m.what, m.theirs, m.ours) == ("passwords", ours.store_id, again.store_id)
    # another CA
    other = SecretStore(tmp_path / "b").identity(region.region.title)
    assert custody.compare("tsami", rec, other).what == "CA"
    assert custody.compare("tsami", "garbage", ours).what == "record"
    # a node deployed before kontur kept the record: the CA it trusts tells
    ca = (tmp_path / "a" / "pki" / "ca.crt").read_text()
    assert custody.compare("tsami", None, ours, ca) is None
    assert custody.compare("tsami", None, other, ca).what == "CA"
    assert custody.compare("tsami", None, ours, "not a certificate").what == "record"
    msg = custody.refusal([custody.compare("tsami", rec, other), m], tmp_path / "b").message
    assert "nothing was changed on any host" in msg and "tsami: deployed with the regional CA" in msg
    assert "kontur secrets import" in msg and str(tmp_path / "b") in msg
    two = custody.refusal([custody.compare(n, rec, other) for n in ("tsami", "onco-lami")], tmp_path / "b").message
    assert "tsami, onco-lami: deployed with the regional CA" in two and two.count("deployed with") == 1


def test_the_guard_reads_the_files_the_render_writes():
    from kontur.render import orthanc as oc
    assert custody.CA_FILE == oc.CA_FILE


def test_export_and_import_move_the_whole_store(region, tmp_path, passphrase):
    a = tmp_path / "a"
    before = _record(region, SecretStore(a))
    render_node(region, "onco-lami", SecretStore(a))         # its certificate and passwords in the store
    SecretStore(a).password("users/ivanova")
    r = kontur("secrets", "export", "-i", str(EXAMPLE), "--secrets", str(a), "--out", str(tmp_path / "x"),
               "--passphrase-file", str(passphrase))
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "x").read_bytes()
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o600
    # nothing readable in the file: no password, no key (the store's id, no secret, names it in the header)
    secrets = json.loads((a / "secrets.json").read_text())
    assert len(secrets) >= 3
    assert all(v.encode() not in data for k, v in secrets.items() if k != "store/id")
    assert b"PRIVATE KEY" not in data
    r = kontur("secrets", "import", "-i", str(EXAMPLE), "--secrets", str(tmp_path / "b"), str(tmp_path / "x"),
               "--passphrase-file", str(passphrase))
    assert r.returncode == 0, r.stderr
    b = tmp_path / "b"
    assert stat.S_IMODE(b.stat().st_mode) == 0o700
    assert json.loads((b / "secrets.json").read_text()) == secrets
    assert sorted(p.name for p in (b / "pki").iterdir()) == sorted(p.name for p in (a / "pki").iterdir())
    assert stat.S_IMODE((b / "pki" / "ca.key").stat().st_mode) == 0o600
    # the imported store renders exactly what the first one does
    assert _record(region, SecretStore(b)) == before
    ra, rb = render_node(region, "onco-lami", SecretStore(a)), render_node(region, "onco-lami", SecretStore(b))
    assert [(f.path, f.content) for f in ra.files] == [(f.path, f.content) for f in rb.files]
    # importing it again changes nothing and says so
    r = kontur("secrets", "import", "-i", str(EXAMPLE), "--secrets", str(b), str(tmp_path / "x"),
               "--passphrase-file", str(passphrase))
    assert r.returncode == 0, r.stderr


def test_a_wrong_passphrase_or_a_changed_file_imports_nothing(region, tmp_path, passphrase):
    a = tmp_path / "a"
    data = custody.export_store(SecretStore(a), region.region.name, region.region.title, PASSPHRASE)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase at all\n")
    (tmp_path / "x").write_bytes(data)
    r = kontur("secrets", "import", "-i", str(EXAMPLE), "--secrets", str(tmp_path / "b"), str(tmp_path / "x"),
               "--passphrase-file", str(wrong))
    assert r.returncode == 2 and "wrong passphrase" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()
    changed = bytearray(data)
    changed[-10] ^= 1
    with pytest.raises(InvalidInput, match="did not authenticate"):
        custody.read_export(bytes(changed), PASSPHRASE, "x")
    with pytest.raises(InvalidInput, match="not a kontur secrets export"):
        custody.read_export(b"hello", PASSPHRASE, "x")
    with pytest.raises(InvalidInput, match="at least 12"):
        custody.export_store(SecretStore(a), region.region.name, region.region.title, "short")


def test_import_never_overwrites_another_store_silently(region, tmp_path, passphrase):
    a, c = tmp_path / "a", tmp_path / "c"
    (tmp_path / "x").write_bytes(custody.export_store(SecretStore(a), region.region.name, region.region.title,
                                                      PASSPHRASE))
    made_by_mistake = SecretStore(c).identity(region.region.title)
    r = kontur("secrets", "import", "-i", str(EXAMPLE), "--secrets", str(c), str(tmp_path / "x"),
               "--passphrase-file", str(passphrase))
    assert r.returncode == 2 and "a different secrets store is already at" in r.stderr, r.stderr
    assert SecretStore(c).identity(region.region.title) == made_by_mistake
    r = kontur("secrets", "import", "-i", str(EXAMPLE), "--secrets", str(c), str(tmp_path / "x"),
               "--passphrase-file", str(passphrase), "--replace")
    assert r.returncode == 0, r.stderr
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("c.replaced-")]
    assert len(kept) == 1 and SecretStore(kept[0]).identity(region.region.title) == made_by_mistake
    assert SecretStore(c).identity(region.region.title) == SecretStore(a).identity(region.region.title)


def test_an_export_of_another_region_is_refused(region, tmp_path, passphrase):
    (tmp_path / "x").write_bytes(custody.export_store(SecretStore(tmp_path / "a"), "elsewhere", "Elsewhere",
                                                      PASSPHRASE))
    r = kontur("secrets", "import", "-i", str(EXAMPLE), "--secrets", str(tmp_path / "b"), str(tmp_path / "x"),
               "--passphrase-file", str(passphrase))
    assert r.returncode == 2 and "region 'elsewhere'" in r.stderr, r.stderr
