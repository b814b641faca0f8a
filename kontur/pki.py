"""The regional certificate authority and per-node certificates.

kontur creates the CA once (in the secrets store), then one key and
certificate per node, used both as the node's nginx server certificate and as
its client certificate when it talks to other nodes (mutual TLS).  Everything
is generated once and read back afterwards, so rendering stays deterministic.
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

from .secrets import SecretStore, atomic_write

CA_DAYS = 3650
NODE_DAYS = 825


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


def ensure_ca(store: SecretStore, region_title: str) -> KeyPair:
    d = store.pki_dir
    crt, key = d / "ca.crt", d / "ca.key"
    if crt.exists() and key.exists():
        return KeyPair(crt.read_bytes(), key.read_bytes())
    k = _key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, region_title[:64]),
        x509.NameAttribute(NameOID.COMMON_NAME, "kontur regional CA"),
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


def node_cert(store: SecretStore, region_title: str, name: str, addresses: list[str],
              *, client_only: bool = False, directory: Path | None = None) -> KeyPair:
    """The certificate of ``name`` (a node, the operator or a user), made once.

    It is made again only if the addresses it must cover have changed (a node
    moved): the old one would fail verification anyway.

    + directory: where its files go (default: the store's pki folder)
    """
    d = directory or store.pki_dir
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    wanted = {name} | set(addresses)
    if crt.exists() and key.exists():
        existing = x509.load_pem_x509_certificate(crt.read_bytes())
        if client_only or _sans(existing) == wanted:
            return KeyPair(crt.read_bytes(), key.read_bytes())
    ca = ensure_ca(store, region_title)
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
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
    (ca.crt, operator.crt, operator.key)."""
    node_cert(store, region_title, "kontur-operator", [], client_only=True)
    d = store.pki_dir
    return d / "ca.crt", d / "kontur-operator.crt", d / "kontur-operator.key"


def user_cert(store: SecretStore, region_title: str, login: str) -> KeyPair:
    """A person's client certificate (common name = the login), for a browser:
    with it nginx lets the browser through to the archive's own password login."""
    d = store.pki_dir / "users"
    d.mkdir(mode=0o700, exist_ok=True)
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
    return store.pki_dir / "users"


def issued_user_cert(store: SecretStore, login: str) -> bytes | None:
    """``login``'s browser certificate as the store holds it, or None if none was issued."""
    crt = _user_dir(store) / f"{login}.crt"
    return crt.read_bytes() if crt.exists() else None


def forget_user_cert(store: SecretStore, login: str) -> None:
    """Remove ``login``'s certificate and key (revoked): ``user_cert`` makes a new pair."""
    for suffix in (".crt", ".key"):
        (_user_dir(store) / f"{login}{suffix}").unlink(missing_ok=True)
