"""The regional certificate authority and per-node certificates.

kontur creates the CA once (in the secrets store), then one key and
certificate per node, used both as the node's nginx server certificate and as
its client certificate when it talks to other nodes (mutual TLS).  Everything
is generated once and read back afterwards, so rendering stays deterministic.

The CA lives in ``pki/``, nodes in ``pki/nodes/``, the operator in
``pki/operator/``, users in ``pki/users/``: a node named ``ca`` or
``kontur-operator`` is a node like any other.  A CA is made only in a store
that never had one: a store that lost its CA key (or its CA while node
certificates remain) is refused, since a new CA would break every
mutual-TLS link of the region at the next deploy.  A certificate is made
again only when it must be: not issued by the store's CA, not covering the
node's addresses, or expiring within :data:`RENEW_DAYS`.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import InvalidInput, OperationFailed
from .files import atomic_write
from .secrets import OPERATOR, STORE_ID_KEY, SecretStore

CA_DAYS = 3650
NODE_DAYS = 825
#: a certificate closer than this to its end is issued anew
RENEW_DAYS = 30

_RESTORE = ("restore the region's store: on a machine that has it, `kontur secrets export -i FILE --out F`, "
            "here `kontur secrets import -i FILE --replace F` (or restore {dir} from a backup)")


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _public(obj) -> bytes:
    return obj.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _has_issued(store: SecretStore) -> list[Path]:
    """Certificates the store issued (or its id, made with the CA): proof it had a CA."""
    found = [p for sub in ("nodes", "operator", "users") if (store.dir / "pki" / sub).is_dir()
             for p in sorted((store.dir / "pki" / sub).glob("*.crt"))]
    if not found and store.get(STORE_ID_KEY) is not None:
        found.append(store.dir / store.FILE)
    return found


def _existing_ca(store: SecretStore, crt: Path, key: Path) -> KeyPair:
    restore = _RESTORE.format(dir=store.dir)
    if not key.exists():
        raise OperationFailed(
            f"the regional CA's key {key} is missing (its certificate {crt} is there); kontur will not make "
            f"a new CA: every node trusts this one, and a new one would break every mutual-TLS link of the "
            f"region at the next deploy; {restore}")
    if not crt.exists():
        raise OperationFailed(
            f"the regional CA's certificate {crt} is missing (its key {key} is there); kontur will not make "
            f"a new CA; {restore}")
    pair = KeyPair(crt.read_bytes(), key.read_bytes())
    try:
        cert = x509.load_pem_x509_certificate(pair.cert_pem)
        private = serialization.load_pem_private_key(pair.key_pem, None)
    except ValueError as exc:
        raise OperationFailed(f"the regional CA in {crt.parent} cannot be read ({exc}); {restore}") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise OperationFailed(
            f"{crt} is not a CA certificate (subject {cert.subject.rfc4514_string()}, CA:FALSE): an older kontur "
            f"wrote the certificate of a node named 'ca' over the regional CA; {restore}")
    if _public(private) != _public(cert):
        raise OperationFailed(f"{key} is not the key of the regional CA {crt}; {restore}")
    return pair


def ensure_ca(store: SecretStore, region_title: str) -> KeyPair:
    """The regional CA, made in a store that never had one."""
    with store.locked():
        d = store.pki_dir
        crt, key = d / "ca.crt", d / "ca.key"
        issued = _has_issued(store)
        if key.exists() and not crt.exists() and not issued:
            return _make_ca(crt, key, region_title)     # a first run stopped between the key and the certificate
        if crt.exists() or key.exists():
            return _existing_ca(store, crt, key)
        if issued:
            raise OperationFailed(
                f"the secrets store {store.dir} has no regional CA ({crt} and {key} are missing) but has "
                f"certificates it issued ({issued[0]}"
                f"{f' and {len(issued) - 1} more' if len(issued) > 1 else ''}): its CA was lost, and a new one "
                f"would break every mutual-TLS link of the region; {_RESTORE.format(dir=store.dir)}")
        return _make_ca(crt, key, region_title)


def _make_ca(crt: Path, key: Path, region_title: str) -> KeyPair:
    return make_ca(crt, key, region_title)


def make_ca(crt: Path, key: Path, region_title: str, common_name: str = "kontur regional CA") -> KeyPair:
    """A CA certificate and key written to ``crt`` and ``key`` (a key already
    there is kept: a first run stopped between the two).  A CA rotation's new CA
    gets another ``common_name`` (kontur.rotation)."""
    k = serialization.load_pem_private_key(key.read_bytes(), None) if key.exists() else _key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, region_title[:64]),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(k.public_key()), critical=False)
        .sign(k, hashes.SHA256())
    )
    atomic_write(key, _pem_key(k), 0o600)
    atomic_write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return KeyPair(crt.read_bytes(), key.read_bytes())


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER, as openssl prints it (``AB:CD:...``)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in ext.get_values_for_type(x509.DNSName)} | {
        str(v) for v in ext.get_values_for_type(x509.IPAddress)}


def _safe_name(name: str) -> str:
    if not name or "/" in name or "\0" in name or name.startswith("."):
        raise InvalidInput(f"{name!r} cannot name a certificate in the secrets store "
                           f"(expected a name without '/' that does not begin with '.')")
    return name


def cert_files(store: SecretStore, name: str, *, directory: Path | None = None) -> tuple[Path, Path]:
    """Where ``name``'s certificate and key are (default: a node's, ``pki/nodes/``)."""
    d = directory or store.pki_subdir("nodes")
    _safe_name(name)
    return d / f"{name}.crt", d / f"{name}.key"


def _reusable(crt: Path, key: Path, ca_cert: x509.Certificate, wanted: set[str], client_only: bool) -> bool:
    """Whether the certificate there may stay: its key, issued by the CA, its
    names, and more than RENEW_DAYS left."""
    try:
        existing = x509.load_pem_x509_certificate(crt.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), None)
    except ValueError:
        return False
    if _public(private) != _public(existing):
        return False
    try:
        existing.verify_directly_issued_by(ca_cert)
    except Exception:  # noqa: BLE001 - ValueError, TypeError, InvalidSignature: not ours
        return False
    if existing.not_valid_after_utc - _now() < dt.timedelta(days=RENEW_DAYS):
        return False
    return client_only or _sans(existing) == wanted


def node_cert(store: SecretStore, region_title: str, name: str, addresses: list[str],
              *, client_only: bool = False, directory: Path | None = None, ca: KeyPair | None = None) -> KeyPair:
    """The certificate of ``name`` (a node, the operator or a user), made once.

    It is made again only if it must be: not issued by the store's CA, the
    addresses it must cover have changed (a node moved), or fewer than
    RENEW_DAYS days left.

    + directory: where its files go (default: the store's ``pki/nodes``)
    + ca: the CA that issues it (default: the store's; a CA rotation's probe uses the new one)
    """
    with store.locked():
        crt, key = cert_files(store, name, directory=directory)
        wanted = {name} | set(addresses)
        ca = ca or ensure_ca(store, region_title)
        ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
        if crt.exists() and key.exists() and _reusable(crt, key, ca_cert, wanted, client_only):
            return KeyPair(crt.read_bytes(), key.read_bytes())
        ca_key = serialization.load_pem_private_key(ca.key_pem, None)
        k = _key()
        now = _now()
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client_only else [
            ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=NODE_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if not client_only:
            alt: list[x509.GeneralName] = [x509.DNSName(name)]
            alt += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(set(addresses))]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        atomic_write(key, _pem_key(k), 0o600)
        atomic_write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return KeyPair(crt.read_bytes(), key.read_bytes())


def operator_cert(store: SecretStore, region_title: str) -> tuple[Path, Path, Path]:
    """Client certificate for the control machine (kontur CLI, checks): paths of
    (the CAs to trust -- ca.crt, or both CAs during a CA rotation --, operator.crt, operator.key)."""
    from .rotation import trust_file
    d = store.pki_subdir("operator")
    node_cert(store, region_title, OPERATOR, [], client_only=True, directory=d)
    return trust_file(store, region_title), d / f"{OPERATOR}.crt", d / f"{OPERATOR}.key"


def user_cert(store: SecretStore, region_title: str, login: str) -> KeyPair:
    """A person's client certificate (common name = the login), for a browser:
    with it nginx lets the browser through to the archive's own password login."""
    d = store.pki_subdir("users")
    return node_cert(store, region_title, login, [], client_only=True, directory=d)


def user_p12(store: SecretStore, region_title: str, login: str, *, legacy: bool = False) -> tuple[bytes, str]:
    """``login``'s certificate, key and the regional CA as PKCS#12 for a browser,
    and its passphrase (made once, kept in the store as ``user-p12/<login>``).

    + legacy: 3DES and SHA-1 instead of AES-256 (older Windows and macOS
      keychains refuse the modern encryption)
    """
    from cryptography.hazmat.primitives.serialization import pkcs12

    pair = user_cert(store, region_title, login)
    ca = ensure_ca(store, region_title)
    passphrase = store.password(f"user-p12/{login}", 18)
    if legacy:
        enc = (serialization.PrivateFormat.PKCS12.encryption_builder()
               .kdf_rounds(50000)
               .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
               .hmac_hash(hashes.SHA1())
               .build(passphrase.encode()))
    else:
        enc = serialization.BestAvailableEncryption(passphrase.encode())
    data = pkcs12.serialize_key_and_certificates(
        login.encode(), serialization.load_pem_private_key(pair.key_pem, None),
        x509.load_pem_x509_certificate(pair.cert_pem), [x509.load_pem_x509_certificate(ca.cert_pem)], enc)
    return data, passphrase


def _user_dir(store: SecretStore) -> Path:
    return store.pki_subdir("users")


def issued_user_cert(store: SecretStore, login: str) -> bytes | None:
    """``login``'s browser certificate as the store holds it, or None if none was issued."""
    crt = _user_dir(store) / f"{login}.crt"
    return crt.read_bytes() if crt.exists() else None


def forget_user_cert(store: SecretStore, login: str) -> None:
    """Remove ``login``'s certificate and key (revoked): ``user_cert`` makes a new pair."""
    with store.locked():
        for suffix in (".crt", ".key"):
            (_user_dir(store) / f"{login}{suffix}").unlink(missing_ok=True)
