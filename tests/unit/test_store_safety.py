# SPDX-License-Identifier: AGPL-3.0-or-later
"""The secrets store and the render output cannot be damaged by a node's name,
a lost file, two kontur commands at once, or links planted in --out (issue 15)."""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kontur import pki
from kontur.errors import KonturError
from kontur.inventory import load
from kontur.render import render_region
from kontur.secrets import SecretStore

REPO = Path(__file__).resolve().parents[2]
TITLE = "Test region"


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _is_ca(pem: bytes) -> bool:
    return _cert(pem).extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def _issued_by(pem: bytes, ca_pem: bytes) -> bool:
    try:
        _cert(pem).verify_directly_issued_by(_cert(ca_pem))
    except Exception:  # noqa: BLE001
        return False
    return True


def _public(key_pem: bytes) -> bytes:
    return serialization.load_pem_private_key(key_pem, None).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _files(store: SecretStore, name: str) -> tuple[Path, Path]:
    """Where the store keeps ``name``'s certificate and key, whatever its layout."""
    crt = [p for p in store.dir.rglob(f"{name}.crt") if "users" not in p.parts]
    assert len(crt) == 1, crt
    return crt[0], crt[0].with_suffix(".key")


# --- 1: node names cannot reach the CA or the operator ---------------------------------

@pytest.mark.parametrize("name", ["ca", "kontur-operator"])
def test_a_node_named_like_the_ca_or_the_operator_leaves_them_alone(tmp_path, name):
    store = SecretStore(tmp_path / "s")
    ca = pki.ensure_ca(store, TITLE)
    operator = pki.operator_cert(store, TITLE)
    operator_bytes = [p.read_bytes() for p in operator]
    node = pki.node_cert(store, TITLE, name, ["10.0.0.7"])
    again = pki.ensure_ca(SecretStore(store.dir), TITLE)
    assert again == ca and _is_ca(again.cert_pem)
    assert pki.fingerprint(again.cert_pem) == pki.fingerprint(ca.cert_pem)
    assert node.key_pem != ca.key_pem and _public(node.key_pem) != _public(ca.key_pem)
    assert not _is_ca(node.cert_pem) and _issued_by(node.cert_pem, ca.cert_pem)
    # the operator's certificate is its own, the node's its own
    assert [p.read_bytes() for p in pki.operator_cert(store, TITLE)] == operator_bytes
    assert node.key_pem not in operator_bytes
    assert pki.node_cert(store, TITLE, name, ["10.0.0.7"]) == node


def test_an_old_flat_store_is_moved_into_the_new_layout_on_open(tmp_path):
    store = SecretStore(tmp_path / "s")
    region = load()
    render_region(region, store, ["tsami", "onco-lami"])
    crt, key = pki.operator_cert(store, TITLE)[1:]
    before = {p.name: p.read_bytes() for p in store.dir.joinpath("pki").rglob("*") if p.is_file()}
    flat = store.dir / "pki"
    for p in list(flat.rglob("*.crt")) + list(flat.rglob("*.key")):     # what an older kontur left
        if p.parent != flat and "users" not in p.parts:
            os.rename(p, flat / p.name)
    for sub in ("nodes", "operator"):
        (flat / sub).rmdir()
    for _ in range(2):                                                      # idempotent
        opened = SecretStore(store.dir)
        assert sorted(p.name for p in flat.iterdir() if p.is_file() and not p.name.startswith(".")) == \
            ["ca.crt", "ca.key"]
        assert (flat / "nodes" / "tsami.crt").read_bytes() == before["tsami.crt"]
        assert (flat / "operator" / "kontur-operator.key").read_bytes() == before["kontur-operator.key"]
    again = render_region(region, opened, ["tsami"])[0]
    assert again.file("/etc/kontur/tls/node.crt").content == before["tsami.crt"]


# --- 2: a lost CA is refused, certificates are renewed only when they must be -----------

def test_a_lost_ca_key_is_refused_and_says_how_to_restore(tmp_path):
    store = SecretStore(tmp_path / "s")
    ca = pki.ensure_ca(store, TITLE)
    pki.node_cert(store, TITLE, "tsami", ["10.0.0.1"])
    (store.pki_dir / "ca.key").unlink()
    with pytest.raises(KonturError, match=r"ca\.key is missing.*kontur secrets import"):
        pki.node_cert(SecretStore(store.dir), TITLE, "tsami", ["10.0.0.1"])
    with pytest.raises(KonturError, match="ca.key is missing"):
        SecretStore(store.dir).identity(TITLE)
    assert (store.pki_dir / "ca.crt").read_bytes() == ca.cert_pem


def test_a_store_that_lost_its_whole_ca_but_has_node_certificates_is_refused(tmp_path):
    store = SecretStore(tmp_path / "s")
    pki.node_cert(store, TITLE, "tsami", ["10.0.0.1"])
    (store.pki_dir / "ca.key").unlink()
    (store.pki_dir / "ca.crt").unlink()
    with pytest.raises(KonturError, match="no regional CA.*kontur secrets import"):
        pki.ensure_ca(SecretStore(store.dir), TITLE)
    assert not (store.pki_dir / "ca.crt").exists()


def test_a_leaf_where_the_ca_should_be_is_refused(tmp_path):
    store = SecretStore(tmp_path / "s")
    pki.ensure_ca(store, TITLE)
    leaf = pki.node_cert(store, TITLE, "x", ["10.0.0.1"])
    (store.pki_dir / "ca.crt").write_bytes(leaf.cert_pem)
    (store.pki_dir / "ca.key").write_bytes(leaf.key_pem)
    with pytest.raises(KonturError, match="not a CA certificate"):
        pki.ensure_ca(SecretStore(store.dir), TITLE)


def test_a_new_store_makes_its_ca(tmp_path):
    store = SecretStore(tmp_path / "s")
    store.password("users/ivanova")                   # passwords first: still a store without a CA
    assert _is_ca(pki.ensure_ca(store, TITLE).cert_pem)


def test_a_certificate_is_issued_again_only_when_it_must_be(tmp_path, monkeypatch):
    store = SecretStore(tmp_path / "s")
    ca = pki.ensure_ca(store, TITLE)
    first = pki.node_cert(store, TITLE, "tsami", ["10.0.0.1"])
    crt, key = _files(store, "tsami")
    assert pki.node_cert(SecretStore(store.dir), TITLE, "tsami", ["10.0.0.1"]) == first
    assert crt.read_bytes() == first.cert_pem and key.read_bytes() == first.key_pem
    moved = pki.node_cert(store, TITLE, "tsami", ["10.0.0.2"])          # the node's address changed
    assert moved != first and "10.0.0.2" in pki._sans(_cert(moved.cert_pem))

    # signed by another CA (a store mixed up with another): made again by ours
    other = SecretStore(tmp_path / "other")
    foreign = pki.node_cert(other, TITLE, "tsami", ["10.0.0.2"])
    crt.write_bytes(foreign.cert_pem)
    key.write_bytes(foreign.key_pem)
    mended = pki.node_cert(SecretStore(store.dir), TITLE, "tsami", ["10.0.0.2"])
    assert mended.cert_pem != foreign.cert_pem and _issued_by(mended.cert_pem, ca.cert_pem)

    # close to its end: made again
    monkeypatch.setattr(pki, "NODE_DAYS", 20)
    short = pki.node_cert(store, TITLE, "lami", ["10.0.0.3"])
    monkeypatch.setattr(pki, "NODE_DAYS", 825)
    renewed = pki.node_cert(store, TITLE, "lami", ["10.0.0.3"])
    assert renewed != short and _issued_by(renewed.cert_pem, ca.cert_pem)
    assert pki.node_cert(store, TITLE, "lami", ["10.0.0.3"]) == renewed


def test_rendering_twice_leaves_every_certificate_as_it_was(tmp_path):
    store = SecretStore(tmp_path / "s")
    region = load()
    render_region(region, store)
    before = {p: p.read_bytes() for p in store.dir.rglob("*") if p.is_file()}
    render_region(load(), SecretStore(store.dir))
    assert {p: p.read_bytes() for p in store.dir.rglob("*") if p.is_file()} == before


# --- 5: two kontur commands at once --------------------------------------------------

def _render_at_once(directory: str, barrier, results) -> None:
    try:
        barrier.wait()
        store = SecretStore(directory)
        bundles = render_region(load(), store, ["tsami", "onco-lami", "crb-gw"])
        seen = {b.node: {f.path: f.content for f in b.files} for b in bundles}
        results.put((dict(store._data), seen))
    except BaseException as exc:  # noqa: BLE001 - said in the test, not lost in the child
        results.put(repr(exc))


def test_two_renders_of_a_fresh_store_at_once_agree(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for rnd in range(4):
        directory = tmp_path / f"s{rnd}"
        barrier, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_render_at_once, args=(str(directory), barrier, results)) for _ in range(2)]
        for p in procs:
            p.start()
        got = [results.get(timeout=120) for _ in procs]
        assert not [g for g in got if isinstance(g, str)], got
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        stored = json.loads((directory / "secrets.json").read_text())
        ca = (directory / "pki" / "ca.crt").read_bytes()
        for passwords, seen in got:
            assert {k: stored[k] for k in passwords} == passwords     # nothing one of them saw was lost
            for node, files in seen.items():
                assert files["/etc/kontur/tls/ca.crt"] == ca
                assert _issued_by(files["/etc/kontur/tls/node.crt"], ca), node
        assert got[0][1] == got[1][1]                                    # byte for byte the same bundles


# --- passwords in the store ---------------------------------------------------------------

def test_a_stored_password_that_is_not_a_string_is_refused(tmp_path):
    store = SecretStore(tmp_path / "s")
    store.password("users/ivanova")
    (store.dir / "secrets.json").write_text(json.dumps({"users/ivanova": 12345}))
    with pytest.raises(KonturError, match=r"secrets\.json: 'users/ivanova' holds int"):
        SecretStore(store.dir)


def test_a_deleted_entry_is_made_again_with_a_warning_naming_it(tmp_path, capfd):
    store = SecretStore(tmp_path / "s")
    old = store.password("links/onco-lami->tsami")
    store.password("users/ivanova")
    capfd.readouterr()
    data = json.loads((store.dir / "secrets.json").read_text())
    del data["links/onco-lami->tsami"]
    (store.dir / "secrets.json").write_text(json.dumps(data))
    again = SecretStore(store.dir)
    assert again.password("users/ivanova") == store.get("users/ivanova")
    assert "warning" not in capfd.readouterr().err
    assert again.password("links/onco-lami->tsami") != old
    err = capfd.readouterr().err
    assert "warning" in err and "links/onco-lami->tsami" in err
    again.password("nodes/new-node/kontur")                             # new, not deleted: no warning
    assert "warning" not in capfd.readouterr().err


# --- 9: the render output ----------------------------------------------------------------

def kontur(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kontur", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=REPO, timeout=120)


def test_render_does_not_write_through_links_planted_in_out(tmp_path):
    env = {"KONTUR_SECRETS": str(tmp_path / "s")}
    out = tmp_path / "out"
    assert kontur("render", "--node", "onco-lami", "--out", str(out), env=env).returncode == 0
    key = out / "onco-lami" / "etc" / "kontur" / "tls" / "node.key"
    victim = tmp_path / "someone-elses-file"
    victim.write_text("theirs\n")
    key.unlink()
    key.symlink_to(victim)
    (out / "onco-lami" / "etc" / "orthanc").rename(tmp_path / "moved")
    (out / "onco-lami" / "etc" / "orthanc").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    r = kontur("render", "--node", "onco-lami", "--out", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "theirs\n" and not (tmp_path / "elsewhere").exists()
    assert not key.is_symlink() and key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY")
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert (out / "onco-lami" / "etc" / "orthanc").is_dir() and not (out / "onco-lami" / "etc" / "orthanc").is_symlink()
    assert sorted(p.name for p in out.iterdir()) == ["onco-lami"]


def test_the_folders_of_removed_nodes_leave_out_with_their_keys(tmp_path):
    from kontur.render.bundle import write_out
    region, out = load(), tmp_path / "out"
    bundles = render_region(region, SecretStore(tmp_path / "s"))
    write_out(out, bundles, keep=set(region.nodes))
    assert (out / "research" / "etc" / "kontur" / "tls" / "node.key").is_file()
    kept = [b for b in bundles if b.node != "research"]           # research left the region
    write_out(out, kept[:1], keep={b.node for b in kept})          # (even rendering one node: `--node`)
    assert sorted(p.name for p in out.iterdir()) == sorted(b.node for b in kept)


def test_an_out_that_kontur_did_not_write_is_refused_and_left_alone(tmp_path):
    env = {"KONTUR_SECRETS": str(tmp_path / "s")}
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    r = kontur("render", "--out", str(out), env=env)
    assert r.returncode != 0 and "notes.txt" in r.stderr and "did not write" in r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_os_errors_on_out_are_messages_not_tracebacks(tmp_path):
    env = {"KONTUR_SECRETS": str(tmp_path / "s")}
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    r = kontur("render", "--node", "tsami", "--out", str(a_file), env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "not a folder" in r.stderr, r.stderr
    r = kontur("render", "--node", "tsami", "--out", str(a_file / "sub"), env=env)
    assert r.returncode != 0 and "Traceback" not in r.stderr and str(a_file) in r.stderr, r.stderr
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        r = kontur("render", "--node", "tsami", "--out", str(locked), env=env)
        assert r.returncode == 1 and "Traceback" not in r.stderr and "ermission denied" in r.stderr, r.stderr


# --- custody: exports move the new layout, and an older kontur's export still imports ------

def test_an_export_carries_node_and_user_certificates_and_an_old_flat_export_imports(tmp_path, monkeypatch):
    from kontur import custody
    region = load()
    a = SecretStore(tmp_path / "a")
    render_region(region, a, ["tsami"])
    pki.operator_cert(a, region.region.title)
    pki.user_cert(a, region.region.title, "ivanova")
    files = {p.relative_to(a.pki_dir).as_posix(): p.read_bytes() for p in a.pki_dir.rglob("*") if p.is_file()}
    assert {"ca.crt", "nodes/tsami.key", "operator/kontur-operator.key", "users/ivanova.key"} <= set(files)

    data = custody.export_store(a, region.region.name, region.region.title, "a long enough passphrase")
    custody.import_store(data, "a long enough passphrase", "x", tmp_path / "b", region.region.name)
    b = SecretStore(tmp_path / "b")
    assert {p.relative_to(b.pki_dir).as_posix(): p.read_bytes() for p in b.pki_dir.rglob("*") if p.is_file()} \
        == files

    # an export made by an older kontur: every file flat beside the CA
    real = custody._contents
    monkeypatch.setattr(custody, "_contents", lambda store: {
        **real(store), "pki": {k.rsplit("/", 1)[-1]: v for k, v in real(store)["pki"].items() if
                               not k.startswith("users/")}})
    old = custody.export_store(a, region.region.name, region.region.title, "a long enough passphrase")
    monkeypatch.setattr(custody, "_contents", real)
    custody.import_store(old, "a long enough passphrase", "x", tmp_path / "c", region.region.name)
    c = SecretStore(tmp_path / "c")
    assert (c.pki_dir / "nodes" / "tsami.crt").read_bytes() == files["nodes/tsami.crt"]
    assert (c.pki_dir / "operator" / "kontur-operator.key").read_bytes() == files["operator/kontur-operator.key"]
    assert pki.ensure_ca(c, region.region.title).key_pem == files["ca.key"]
    # the same store again is recognised as the same (nothing replaced)
    assert custody.import_store(data, "a long enough passphrase", "x", tmp_path / "b", region.region.name)[1] is None


def test_an_import_into_a_store_another_command_is_writing_is_refused_and_changes_nothing(tmp_path):
    import fcntl

    from kontur import custody
    from kontur.errors import InvalidInput
    region = load()
    a, b = SecretStore(tmp_path / "a"), SecretStore(tmp_path / "b")
    render_region(region, a, ["tsami"])
    render_region(region, b, ["tsami"])
    data = custody.export_store(a, region.region.name, region.region.title, "a long enough passphrase")
    before = {p: p.read_bytes() for p in b.dir.rglob("*") if p.is_file()}
    with b.locked():                                   # a deploy or a rotation writing to b
        with pytest.raises(InvalidInput, match="in use by another kontur command"):
            custody.import_store(data, "a long enough passphrase", "x", b.dir, region.region.name, replace=True)
    assert {p: p.read_bytes() for p in b.dir.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob("b.replaced-*"))
    # and once it has ended, the import goes through (b kept aside)
    custody.import_store(data, "a long enough passphrase", "x", b.dir, region.region.name, replace=True)
    assert len(list(tmp_path.glob("b.replaced-*"))) == 1
    # a new store's directory: two imports at once do not interleave
    fd = os.open(tmp_path / ".c.import.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(InvalidInput, match="in use"):
            custody.import_store(data, "a long enough passphrase", "x", tmp_path / "c", region.region.name)
        assert not (tmp_path / "c").exists()
    finally:
        os.close(fd)
