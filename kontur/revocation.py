# SPDX-License-Identifier: AGPL-3.0-or-later
"""Revoked browser certificates: the list, and the CRL every node's nginx checks.

A person's client certificate (``kontur users issue``) lets their browser
through a node's nginx to the archive's own password login.  When a laptop is
lost or a person leaves, ``kontur users revoke LOGIN --reason …`` records the
certificate's serial here, in the secrets store, and the next ``kontur deploy``
puts the regional CA's certificate revocation list on every node: nginx then
refuses that certificate at the handshake's end (400), and every other
certificate works as before.  ``users issue`` afterwards hands the person a new
certificate.

The CRL is signed by the regional CA and kept in the store, so rendering stays
deterministic: it is signed again only when the list changes or when less than
:data:`RESIGN_DAYS` of its validity are left (nginx refuses every client
certificate once a CRL's next update has passed, so ``kontur check`` reports
its days left with the certificates').
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .errors import InvalidInput, OperationFailed
from .files import atomic_write
from .secrets import SecretStore

#: the store's files (in its pki/revocation folder)
LIST_FILE = "revoked.json"
CRL_FILE = "crl.pem"
#: a CRL is valid this long after it is signed ...
CRL_DAYS = 400
#: ... and signed again at a render when fewer days than this are left
RESIGN_DAYS = 200


@dataclass(frozen=True)
class Revoked:
    login: str
    serial: int
    revoked_at: str
    reason: str

    def as_dict(self) -> dict:
        return {"login": self.login, "serial": str(self.serial), "revoked_at": self.revoked_at,
                "reason": self.reason}


def _dir(store: SecretStore) -> Path:
    """Beside the CA, in the store's pki folder: exported and imported with it."""
    return store.pki_subdir("revocation")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def revoked(store: SecretStore) -> list[Revoked]:
    """Every certificate revoked so far, oldest first."""
    path = _dir(store) / LIST_FILE
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [Revoked(r["login"], int(r["serial"]), r["revoked_at"], r["reason"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OperationFailed(f"the revocation list {path} cannot be read ({exc}); "
                              "restore the secrets store from its export (`kontur secrets import`)") from None


def revoke(store: SecretStore, login: str, cert_pem: bytes | None, reason: str) -> Revoked:
    """Record ``login``'s certificate (``cert_pem``, as the store holds it) as revoked."""
    if not reason.strip():
        raise InvalidInput("a revocation needs --reason: who asked for it and why (it is kept with the list)")
    if cert_pem is None:
        raise InvalidInput(f"no certificate was issued to {login!r} (nothing to revoke); "
                           "`kontur users issue` makes one")
    with store.locked():
        return _append(store, login, x509.load_pem_x509_certificate(cert_pem).serial_number, reason)


def _append(store: SecretStore, login: str, serial: int, reason: str) -> Revoked:
    rows = revoked(store)
    if any(r.serial == serial for r in rows):
        raise InvalidInput(f"{login!r}'s certificate (serial {serial:x}) is revoked already")
    row = Revoked(login, serial, _now().isoformat(), reason.strip())
    data = [r.as_dict() for r in rows + [row]]
    atomic_write(_dir(store) / LIST_FILE, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode())
    return row


def is_revoked(store: SecretStore, cert_pem: bytes) -> bool:
    serial = x509.load_pem_x509_certificate(cert_pem).serial_number
    return any(r.serial == serial for r in revoked(store))


def crl_pem(store: SecretStore, ca_cert_pem: bytes, ca_key_pem: bytes, *, now: dt.datetime | None = None) -> bytes:
    """The CA's CRL listing every revoked serial: the stored one while it is
    current, signed anew when the list changed or its validity runs short."""
    with store.locked():
        return _crl(store, ca_cert_pem, ca_key_pem, now or _now())


def crl_bundle(store: SecretStore, cas, *, now: dt.datetime | None = None) -> bytes:
    """The CRL file every node's nginx gets: one list per trusted CA (``cas``,
    KeyPairs, the issuing CA first; two during a CA rotation).  nginx checks a
    client certificate against its issuer's list and refuses one whose issuer
    has none, so each trusted CA signs its own (the same serials: they are
    random, a serial of one CA names no certificate of the other)."""
    with store.locked():
        parts = [_crl(store, ca.cert_pem, ca.key_pem, now or _now(),
                      CRL_FILE if i == 0 else f"crl-{_fp(ca.cert_pem)}.pem") for i, ca in enumerate(cas)]
    return b"".join(parts)


def _fp(cert_pem: bytes) -> str:
    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()[:16]


def _crl(store: SecretStore, ca_cert_pem: bytes, ca_key_pem: bytes, now: dt.datetime,
         name: str = CRL_FILE) -> bytes:
    rows = revoked(store)
    path = _dir(store) / name
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    if path.exists():
        try:
            crl = x509.load_pem_x509_crl(path.read_bytes())
            listed = {r.serial_number for r in crl}
            fresh = crl.next_update_utc is not None and crl.next_update_utc - now > dt.timedelta(days=RESIGN_DAYS)
            if listed == {r.serial for r in rows} and fresh and crl.issuer == ca.subject \
                    and crl.is_signature_valid(ca.public_key()):
                return path.read_bytes()
        except ValueError:
            pass                                # unreadable: signed anew below
    key = serialization.load_pem_private_key(ca_key_pem, None)
    number = int(now.timestamp())
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca.subject)
               .last_update(now - dt.timedelta(minutes=5))
               .next_update(now + dt.timedelta(days=CRL_DAYS))
               .add_extension(x509.CRLNumber(number), critical=False))
    for r in rows:
        at = dt.datetime.fromisoformat(r.revoked_at)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(r.serial).revocation_date(at).build())
    data = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    atomic_write(path, data, 0o644)
    return data


def crl_days_left(crl: bytes, now: dt.datetime | None = None) -> float:
    """Days until a CRL's next update (negative: nginx refuses every client certificate)."""
    c = x509.load_pem_x509_crl(crl)
    return ((c.next_update_utc or (now or _now())) - (now or _now())).total_seconds() / 86400


__all__ = ["Revoked", "revoke", "revoked", "is_revoked", "crl_pem", "crl_bundle", "crl_days_left", "CRL_DAYS"]
