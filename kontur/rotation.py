# SPDX-License-Identifier: AGPL-3.0-or-later
"""Rotating the store's secrets on purpose, with an audit log (``kontur secrets rotate``).

Once made, a secret never changes by itself (rendering stays deterministic and
``deploy`` refuses another store's).  A rotation is the one way to change one:

* a **password** (``rotate password KEY``): a new random value under the same
  key; the next deploy pushes it wherever the renderer puts it -- Orthanc's
  ``credentials.json`` on both ends of a link, the PostgreSQL role's SCRAM
  verifier, the service account kontur's own tools log in with;
* a **node's certificate** (``rotate cert NODE``): a new key and certificate
  from the current CA, pushed by the next deploy of that node;
* the **regional CA** (``rotate ca``), a change-over in three phases with a
  deploy of every node after each, so that every link stays up:

  1. ``rotate ca`` makes the new CA; every node's trust bundle
     (``/etc/kontur/tls/ca.crt``: nginx's ``ssl_client_certificate`` and
     ``proxy_ssl_trusted_certificate``, Orthanc's ``HttpsCACertificates``)
     holds the old CA and the new one, and its CRL file a list signed by each;
     the certificates are still the old CA's;
  2. ``rotate ca --continue`` (refused until every node trusts the new CA: a
     handshake with a client certificate of the new CA) makes the new CA the
     one that issues: the next render issues every node's, the operator's
     certificate anew (users get theirs with ``kontur users issue``); the old
     CA stays trusted, and a node's record of the old CA is accepted by
     ``deploy``'s custody check as this store's predecessor;
  3. ``rotate ca --finish`` (refused until every node presents a certificate
     of the new CA) drops the old CA from the bundle; its certificate is kept
     in the store (``pki/rotation/retired-…``), its key deleted.

Every rotation appends one line to ``pki/rotation/audit.jsonl`` in the store
(exported and imported with it): when, who (the OS user and the host), what,
why -- never a value.
"""
from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import secrets as _random
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from .errors import InvalidInput, OperationFailed
from .files import atomic_write
from .secrets import STORE_ID_KEY, SecretStore

AUDIT_FILE = "audit.jsonl"
STATE_FILE = "ca.json"
#: the new CA while only trusted (phase 1), the old one while still trusted (phase 2)
NEXT_CA, PREVIOUS_CA = "next-ca", "previous-ca"
#: what the operator's client verifies servers with during a change-over
TRUST_FILE = "trust.crt"
#: keys that are no password to rotate: the store's id names the store (a new
#: one would read as another store); a browser file's passphrase goes with the file
NOT_ROTATABLE = (STORE_ID_KEY,)
NOT_ROTATABLE_PREFIXES = ("user-p12/",)

PHASE_TRUST, PHASE_REISSUE = "trust", "reissue"


def _dir(store: SecretStore) -> Path:
    return store.pki_subdir("rotation")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _reason(reason: str | None) -> str:
    if not reason or not reason.strip():
        raise InvalidInput("a rotation needs --reason: who asked for it and why (it is kept in the audit log)")
    return reason.strip()


# --- the audit log ----------------------------------------------------------------------

def audit(store: SecretStore, what: str, reason: str, **details) -> dict:
    """Append one entry (no secret value in ``details``); under the store's lock."""
    entry = {"at": _now(), "who": _who(), "what": what, "reason": reason, **details}
    with store.locked():
        path = _dir(store) / AUDIT_FILE
        old = path.read_bytes() if path.exists() else b""
        atomic_write(path, old + (json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n").encode())
    return entry


def log(store: SecretStore) -> list[dict]:
    """Every rotation so far, oldest first."""
    path = store.dir / "pki" / "rotation" / AUDIT_FILE
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            raise OperationFailed(f"the rotation log {path} line {number} cannot be read ({exc}); "
                                  f"restore the store from its export (`kontur secrets import`)") from None
        rows.append(row)
    return rows


# --- passwords -----------------------------------------------------------------------------

def rotatable(store: SecretStore) -> list[str]:
    return [k for k in store.keys() if k not in NOT_ROTATABLE and not k.startswith(NOT_ROTATABLE_PREFIXES)]


def rotate_password(store: SecretStore, key: str, reason: str | None) -> dict:
    """A new random value for ``key``; returns the audit entry."""
    reason = _reason(reason)
    with store.locked():
        keys = rotatable(store)
        if key not in keys:
            why = ("is the store's id, not a password (a new one would make it another store)"
                   if key in NOT_ROTATABLE else
                   "is a browser file's passphrase: `kontur users issue` makes a new file"
                   if key.startswith(NOT_ROTATABLE_PREFIXES) else "is no key of this store")
            raise InvalidInput(f"{key!r} {why}; the passwords of this store are:\n  " + "\n  ".join(keys))
        length = len(store.get(key) or "") * 3 // 4 or 24      # token_urlsafe(n) is ~4n/3 characters
        store.replace_password(key, _random.token_urlsafe(max(length, 18)))
        return audit(store, "password", reason, key=key)


# --- one node's certificate ----------------------------------------------------------------------

def rotate_cert(store: SecretStore, region, node: str, reason: str | None) -> dict:
    """A new key and certificate for ``node`` from the current CA; returns the audit entry."""
    from .pki import cert_files, fingerprint, node_cert
    reason = _reason(reason)
    if node not in region.nodes:
        raise InvalidInput(f"{node!r} is no node of region {region.region.name}; its nodes are: "
                           + ", ".join(region.nodes))
    with store.locked():
        crt, key = cert_files(store, node)
        old = x509.load_pem_x509_certificate(crt.read_bytes()).serial_number if crt.exists() else None
        for p in (crt, key):
            p.unlink(missing_ok=True)
        pair = node_cert(store, region.region.title, node, [region.nodes[node].address])
        new = x509.load_pem_x509_certificate(pair.cert_pem)
        return audit(store, "certificate", reason, node=node,
                     old_serial=None if old is None else f"{old:x}", new_serial=f"{new.serial_number:x}",
                     sha256=fingerprint(pair.cert_pem))


# --- the CA's change-over ----------------------------------------------------------------------

@dataclass(frozen=True)
class Changeover:
    phase: str          # PHASE_TRUST or PHASE_REISSUE
    old: str            # SHA-256 of the CA being replaced
    new: str            # SHA-256 of the CA replacing it
    started_at: str


def changeover(store: SecretStore) -> Changeover | None:
    """The CA change-over under way, if any."""
    path = store.dir / "pki" / "rotation" / STATE_FILE
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        c = Changeover(str(d["phase"]), str(d["old"]), str(d["new"]), str(d["started_at"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OperationFailed(f"the CA change-over's state {path} cannot be read ({exc}); restore the store "
                              f"from its export (`kontur secrets import`)") from None
    if c.phase not in (PHASE_TRUST, PHASE_REISSUE):
        raise OperationFailed(f"the CA change-over's state {path} names an unknown phase {c.phase!r}")
    return c


def _save(store: SecretStore, c: Changeover | None) -> None:
    path = _dir(store) / STATE_FILE
    if c is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, (json.dumps(c.__dict__, indent=2) + "\n").encode())


def _pair(store: SecretStore, stem: str):
    from .pki import KeyPair
    d = _dir(store)
    return KeyPair((d / f"{stem}.crt").read_bytes(), (d / f"{stem}.key").read_bytes())


def trusted(store: SecretStore, region_title: str) -> list:
    """The CAs every node trusts now (KeyPairs): the issuing one first, then the
    other of a change-over."""
    from .pki import ensure_ca
    cas = [ensure_ca(store, region_title)]
    c = changeover(store)
    if c is not None:
        cas.append(_pair(store, NEXT_CA if c.phase == PHASE_TRUST else PREVIOUS_CA))
    return cas


def accepted(store: SecretStore) -> tuple[str, ...]:
    """CA fingerprints a node may have been deployed with besides the issuing CA's:
    the predecessor, while the change-over is in its second phase."""
    c = changeover(store)
    return (c.old,) if c is not None and c.phase == PHASE_REISSUE else ()


def trust_bundle(store: SecretStore, region_title: str) -> bytes:
    """Every trusted CA's certificate, one PEM file (the issuing CA alone outside a change-over)."""
    return b"".join(p.cert_pem if p.cert_pem.endswith(b"\n") else p.cert_pem + b"\n"
                    for p in trusted(store, region_title))


def trust_file(store: SecretStore, region_title: str) -> Path:
    """A file of :func:`trust_bundle` for the control machine's own clients."""
    if changeover(store) is None:
        return store.pki_dir / "ca.crt"
    path = _dir(store) / TRUST_FILE
    data = trust_bundle(store, region_title)
    if not path.exists() or path.read_bytes() != data:
        atomic_write(path, data, 0o644)
    return path


def _ca_name(region_title: str) -> str:
    """A name no other CA of the store had (OpenSSL finds a certificate's issuer and
    a CRL by name: two trusted CAs must not share one)."""
    return f"kontur regional CA {dt.date.today().isoformat()} {_random.token_hex(3)}"


def start_ca(store: SecretStore, region_title: str, reason: str | None) -> dict:
    """Phase 1: a new CA, trusted beside the old one; nothing issued from it yet."""
    from .pki import ensure_ca, fingerprint, make_ca
    reason = _reason(reason)
    with store.locked():
        c = changeover(store)
        if c is not None:
            raise InvalidInput(_in_phase(c))
        old = ensure_ca(store, region_title)
        d = _dir(store)
        new = make_ca(d / f"{NEXT_CA}.crt", d / f"{NEXT_CA}.key", region_title, _ca_name(region_title))
        c = Changeover(PHASE_TRUST, fingerprint(old.cert_pem), fingerprint(new.cert_pem), _now())
        _save(store, c)
        return audit(store, "ca", reason, phase=1, old_ca=c.old, new_ca=c.new)


def _in_phase(c: Changeover) -> str:
    if c.phase == PHASE_TRUST:
        return (f"a CA change-over is under way since {c.started_at} (phase 1 of 3: every node trusts the old "
                f"and the new CA); deploy every node, then `kontur secrets rotate ca --continue --reason …`")
    return (f"a CA change-over is under way since {c.started_at} (phase 2 of 3: certificates from the new CA); "
            f"deploy every node, then `kontur secrets rotate ca --finish --reason …`")


def continue_ca(store: SecretStore, region_title: str, reason: str | None, *, not_ready: list[str],
                forced: bool = False) -> dict:
    """Phase 2: the new CA issues, the old one stays trusted.  ``not_ready``: the
    nodes that do not trust the new CA yet (refused unless ``forced``)."""
    reason = _reason(reason)
    with store.locked():
        c = changeover(store)
        if c is None:
            raise InvalidInput("no CA change-over is under way; `kontur secrets rotate ca --reason …` starts one")
        if c.phase != PHASE_TRUST:
            raise InvalidInput(_in_phase(c))
        if not_ready and not forced:
            raise InvalidInput(
                f"refused: {len(not_ready)} node(s) do not trust the new CA yet: {', '.join(not_ready)}; "
                f"deploy them (`kontur deploy`) and run this again -- a certificate of the new CA would not "
                f"be accepted there")
        pki, d = store.pki_dir, _dir(store)
        # each step may be run again after an interruption: the old CA kept aside once, the new
        # one copied over it, the phase saved, and only then the new CA's other copy removed
        for suffix, mode in ((".crt", 0o644), (".key", 0o600)):
            if not (d / f"{PREVIOUS_CA}{suffix}").exists():
                atomic_write(d / f"{PREVIOUS_CA}{suffix}", (pki / f"ca{suffix}").read_bytes(), mode)
        for suffix, mode in ((".key", 0o600), (".crt", 0o644)):
            atomic_write(pki / f"ca{suffix}", (d / f"{NEXT_CA}{suffix}").read_bytes(), mode)
        _save(store, Changeover(PHASE_REISSUE, c.old, c.new, c.started_at))
        for suffix in (".crt", ".key"):
            (d / f"{NEXT_CA}{suffix}").unlink()
        return audit(store, "ca", reason, phase=2, old_ca=c.old, new_ca=c.new,
                     **({"forced_past": not_ready} if not_ready else {}))


def finish_ca(store: SecretStore, region_title: str, reason: str | None, *, not_ready: list[str],
              forced: bool = False) -> dict:
    """Phase 3: the old CA is no longer trusted.  ``not_ready``: the nodes that do
    not present a certificate of the new CA yet (refused unless ``forced``)."""
    reason = _reason(reason)
    with store.locked():
        c = changeover(store)
        if c is None:
            raise InvalidInput("no CA change-over is under way; `kontur secrets rotate ca --reason …` starts one")
        if c.phase != PHASE_REISSUE:
            raise InvalidInput(_in_phase(c) + " (--finish comes after --continue)")
        if not_ready and not forced:
            raise InvalidInput(
                f"refused: {len(not_ready)} node(s) still present a certificate of the old CA: "
                f"{', '.join(not_ready)}; deploy them (`kontur deploy`) and run this again -- once the old CA is "
                f"no longer trusted, their links would break")
        d = _dir(store)
        atomic_write(d / f"retired-{c.old.replace(':', '')[:16]}.crt", (d / f"{PREVIOUS_CA}.crt").read_bytes(), 0o644)
        for suffix in (".crt", ".key"):
            (d / f"{PREVIOUS_CA}{suffix}").unlink(missing_ok=True)
        (d / TRUST_FILE).unlink(missing_ok=True)
        for crl in (store.dir / "pki" / "revocation").glob("crl-*.pem"):     # the other CA's list
            crl.unlink()
        _save(store, None)
        return audit(store, "ca", reason, phase=3, old_ca=c.old, new_ca=c.new,
                     **({"forced_past": not_ready} if not_ready else {}))


def old_user_certs(store: SecretStore) -> list[str]:
    """Logins whose browser certificate is not the issuing CA's (to hand out anew)."""
    ca = x509.load_pem_x509_certificate((store.pki_dir / "ca.crt").read_bytes())
    out = []
    users = store.dir / "pki" / "users"
    for crt in sorted(users.glob("*.crt")) if users.is_dir() else []:
        try:
            x509.load_pem_x509_certificate(crt.read_bytes()).verify_directly_issued_by(ca)
        except Exception:  # noqa: BLE001 - not issued by it
            out.append(crt.stem)
    return out



# --- is every node ready for the next phase? ----------------------------------------------------

def _handshake(address: str, port: int, cafile: Path, certfile: Path, keyfile: Path,
               timeout: float) -> tuple[bytes | None, int | None, str | None]:
    """(the server's certificate, the HTTP status of GET /, why not) over mutual TLS."""
    import http.client
    import ssl
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False          # only who issued it matters here
    ctx.load_cert_chain(str(certfile), str(keyfile))
    conn = http.client.HTTPSConnection(address, port, context=ctx, timeout=timeout)
    try:
        conn.request("GET", "/")
        der = conn.sock.getpeercert(binary_form=True)
        resp = conn.getresponse()
        body = resp.read(4096)
        if resp.status == 400 and b"SSL certificate" in body:
            return der, resp.status, "refused the client certificate of the new CA"
        return der, resp.status, None
    except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
        return None, None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def not_ready(store: SecretStore, region, *, timeout: float = 10.0) -> dict[str, str]:
    """The nodes not ready for the change-over's next phase, with why: in phase 1,
    those whose nginx does not accept a client certificate of the new CA; in
    phase 2, those that do not present a certificate of the new CA.  Every
    node is asked at once over HTTPS from this machine (as `kontur check` does)."""
    import concurrent.futures
    import tempfile
    from .pki import node_cert
    c = changeover(store)
    if c is None:
        return {}
    title = region.region.title
    new = _pair(store, NEXT_CA) if c.phase == PHASE_TRUST else None
    if new is None:
        from .pki import ensure_ca
        new = ensure_ca(store, title)
    new_ca = x509.load_pem_x509_certificate(new.cert_pem)
    cafile = trust_file(store, title)
    with tempfile.TemporaryDirectory(prefix="kontur-rotation-") as tmp:
        d = Path(tmp)
        node_cert(store, title, "kontur-rotation-probe", [], client_only=True, directory=d, ca=new)
        certfile, keyfile = d / "kontur-rotation-probe.crt", d / "kontur-rotation-probe.key"

        def ask(node):
            der, _status, why = _handshake(region.nodes[node].address, region.ports(node).https, cafile,
                                           certfile, keyfile, timeout)
            if why:
                return node, why
            if c.phase == PHASE_REISSUE:
                try:
                    x509.load_der_x509_certificate(der).verify_directly_issued_by(new_ca)
                except Exception:  # noqa: BLE001 - another issuer: the old CA's certificate
                    return node, "presents a certificate of the old CA"
            return node, None

        with concurrent.futures.ThreadPoolExecutor(min(32, len(region.nodes) or 1)) as pool:
            answers = list(pool.map(ask, list(region.nodes)))
    return {n: why for n, why in answers if why}
