# SPDX-License-Identifier: AGPL-3.0-or-later
"""Which secrets store a region belongs to, and moving it between the
operators' machines.

A store holds the regional CA and every password.  Deployed from another
store -- a second control machine, or a store lost and made anew -- kontur
would push a new CA and new passwords to every node and every mutual-TLS link
and account of the region would break at once.  So:

* every node records the store it was deployed from (:data:`STORE_FILE`: the
  CA's SHA-256 fingerprint and the store's random id; neither is a secret);
* ``kontur deploy`` reads that record from every host before it changes
  anything and refuses when one differs (:func:`mismatches`, :func:`refusal`);
* ``kontur secrets export`` / ``import`` move the whole store as one file
  encrypted with a passphrase (:func:`export_store`, :func:`import_store`):
  scrypt derives the key, Fernet (AES-128-CBC + HMAC-SHA256) seals the
  contents -- both from ``cryptography``, the library the regional PKI
  already uses; nothing here is hand-made cryptography.
"""
from __future__ import annotations

import base64
import datetime as dt
import fcntl
import json
import os
import secrets as _random
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput
from .files import atomic_write
from .secrets import SecretStore, StoreIdentity, layout_name

#: on every node: the store it was deployed from
STORE_FILE = "/etc/kontur/store.json"
#: the regional CA every node trusts (kontur.render.orthanc.CA_FILE)
CA_FILE = "/etc/kontur/tls/ca.crt"

MAGIC = b"KONTUR-SECRETS-1\n"
#: scrypt's cost: 2**15 x 8 x 128 bytes = 32 MiB and ~0.1 s per try
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 15, 8, 1
MIN_PASSPHRASE = 12


# --- the record on every node ---------------------------------------------------------

def record(region_name: str, identity: StoreIdentity) -> dict[str, str]:
    """What :data:`STORE_FILE` holds."""
    return {"region": region_name, **identity.as_dict(),
            "about": "the kontur secrets store this node was deployed from; "
                     "kontur deploy refuses to push another store's CA or passwords here"}


@dataclass(frozen=True)
class Mismatch:
    node: str
    what: str        # "CA" or "passwords" or "record"
    theirs: str
    ours: str


def compare(node: str, text: str | None, ours: StoreIdentity, ca_pem: str | None = None) -> Mismatch | None:
    """The node's record against this machine's store.  Without a record (a new
    host, or one deployed before kontur kept it) the CA the node trusts
    (``ca_pem``, :data:`CA_FILE`) is compared, if it has one."""
    if text is None:
        if not ca_pem:
            return None
        from .pki import fingerprint
        try:
            theirs = fingerprint(ca_pem.encode())
        except ValueError:
            return Mismatch(node, "record", f"{CA_FILE} is no certificate", ours.ca_sha256)
        return None if theirs in (ours.ca_sha256, *ours.accepts) else Mismatch(node, "CA", theirs, ours.ca_sha256)
    try:
        rec = json.loads(text)
        theirs = StoreIdentity(ca_sha256=str(rec["ca_sha256"]), store_id=str(rec["store_id"]))
    except (ValueError, KeyError, TypeError):
        return Mismatch(node, "record", f"{STORE_FILE} unreadable: {text[:80]!r}", ours.store_id)
    if theirs.ca_sha256 not in (ours.ca_sha256, *ours.accepts):      # accepts: a CA rotation's predecessor
        return Mismatch(node, "CA", theirs.ca_sha256, ours.ca_sha256)
    if theirs.store_id != ours.store_id:
        return Mismatch(node, "passwords", theirs.store_id, ours.store_id)
    return None


def refusal(found: list[Mismatch], store_dir: Path) -> InvalidInput:
    """The one message a refused deploy prints: which nodes, what would break, what to do
    (nodes deployed from the same other store on one line)."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for m in found:
        groups.setdefault((m.what, m.theirs, m.ours), []).append(m.node)
    lines = []
    for (what, theirs, ours), nodes in groups.items():
        who = ", ".join(nodes)
        if what == "CA":
            lines.append(f"{who}: deployed with the regional CA {_short(theirs)}; this store's CA is "
                         f"{_short(ours)}: every mutual-TLS link to and from {'it' if len(nodes) == 1 else 'them'} "
                         f"would break")
        elif what == "passwords":
            lines.append(f"{who}: same CA, but deployed from the store {theirs}; this one is {ours} "
                         f"(made anew?): every account and link password there would change")
        else:
            lines.append(f"{who}: {theirs}; expected the record kontur writes")
    return InvalidInput(
        f"refused: the secrets store {store_dir} is not the one {len(found)} node(s) of the region were "
        f"deployed from; nothing was changed on any host:\n  " + "\n  ".join(lines)
        + "\nuse the region's store: on the machine that has it, `kontur secrets export -i FILE --out F`, "
          "here `kontur secrets import -i FILE F` (or point --secrets DIR / KONTUR_SECRETS at it)")


def _short(fp: str) -> str:
    return f"SHA-256 {fp[:23]}…"


# --- export / import -------------------------------------------------------------------

def _fernet(passphrase: str, salt: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P):
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
    key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))
    return Fernet(base64.urlsafe_b64encode(key))


def _contents(store: SecretStore) -> dict[str, object]:
    """The passwords, and every file under ``pki/`` by its path there
    (``ca.crt``, ``nodes/tsami.key``, ``users/ivanova.crt``...)."""
    files = {}
    root = store.pki_dir
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or path.is_symlink() or not path.is_file():
            continue
        files[rel.as_posix()] = base64.b64encode(path.read_bytes()).decode()
    return {"secrets": {k: store.get(k) for k in store.keys()}, "pki": files}


def _normalised(pki: dict[str, str]) -> dict[str, str]:
    """An export of an older kontur names node certificates beside the CA: where they go now."""
    return {layout_name(name): b64 for name, b64 in pki.items()}


def export_store(store: SecretStore, region_name: str, region_title: str, passphrase: str) -> bytes:
    """The whole store as one encrypted file."""
    if len(passphrase) < MIN_PASSPHRASE:
        raise InvalidInput(f"the passphrase has {len(passphrase)} characters; expected at least {MIN_PASSPHRASE}")
    identity = store.identity(region_title)
    salt = _random.token_bytes(16)
    header = {"region": region_name, **identity.as_dict(), "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R,
              "p": SCRYPT_P, "salt": base64.b64encode(salt).decode(),
              "exported_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    body = json.dumps({"region": region_name, **_contents(store)}).encode()
    return MAGIC + json.dumps(header, sort_keys=True).encode() + b"\n" + _fernet(passphrase, salt).encrypt(body)


def read_export(data: bytes, passphrase: str, source: str) -> tuple[dict, dict]:
    """(header, contents) of an exported store; a wrong passphrase or a damaged file is said as such."""
    from cryptography.fernet import InvalidToken
    if not data.startswith(MAGIC):
        raise InvalidInput(f"{source} is not a kontur secrets export (expected it to begin with "
                           f"{MAGIC.decode().strip()!r})")
    try:
        head, token = data[len(MAGIC):].split(b"\n", 1)
        header = json.loads(head)
        salt = base64.b64decode(header["salt"])
        fernet = _fernet(passphrase, salt, int(header["n"]), int(header["r"]), int(header["p"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{source}: its header is damaged ({type(exc).__name__}); export the store again") from None
    try:
        body = json.loads(fernet.decrypt(token.strip()))
    except InvalidToken:
        raise InvalidInput(f"{source}: wrong passphrase, or the file was changed after export "
                           f"(it did not authenticate); nothing was imported") from None
    if not isinstance(body.get("secrets"), dict) or not isinstance(body.get("pki"), dict):
        raise InvalidInput(f"{source}: decrypted, but holds no store; export it again")
    for name in body["pki"]:
        parts = name.split("/") if isinstance(name, str) else [""]
        if len(parts) > 2 or any(not part or part.startswith(".") for part in parts) \
                or not isinstance(body["pki"][name], str):
            raise InvalidInput(f"{source}: holds an unexpected file name {name!r}; nothing was imported")
    for key, value in body["secrets"].items():
        if not isinstance(value, str):
            raise InvalidInput(f"{source}: the secret {key!r} is {type(value).__name__}, not a string; "
                               f"nothing was imported")
    body["pki"] = _normalised(body["pki"])
    return header, body


def import_store(data: bytes, passphrase: str, source: str, directory: Path, region_name: str,
                 *, replace: bool = False) -> tuple[StoreIdentity, Path | None]:
    """Write an exported store to ``directory``.  A store already there with other
    contents is kept aside (``DIR.replaced-TIME``) with ``replace``, else refused.
    Returns the identity imported and where the old store went, if anywhere."""
    header, body = read_export(data, passphrase, source)
    if body.get("region") != region_name:
        raise InvalidInput(f"{source} is the store of region {body.get('region')!r}; the inventory is of "
                           f"region {region_name!r}")
    identity = StoreIdentity(ca_sha256=str(header.get("ca_sha256")), store_id=str(body["secrets"].get(
        "store/id", "")))
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    busy = InvalidInput(f"the secrets store {directory} is in use by another kontur command (a deploy, a render, "
                        f"a rotation, an import); nothing was imported. Import again when it has ended")
    # two imports into one directory do not interleave (a lock beside it: the store's own lock is taken
    # again by what the import opens); a command writing the store now is waited for by nobody: refused
    lock_path = directory.with_name(f".{directory.name}.import.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if not _try_lock(fd) or ((directory / SecretStore.LOCK).is_file() and not _free(directory / SecretStore.LOCK)):
            raise busy
        return _import_locked(body, header, identity, directory, replace)
    finally:
        os.close(fd)
        lock_path.unlink(missing_ok=True)


def _try_lock(fd: int) -> bool:
    """An exclusive flock on ``fd`` without waiting; False when someone holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _free(lock_file: Path) -> bool:
    """No kontur command holds the store's lock (tried without waiting, released at once)."""
    fd = os.open(lock_file, os.O_RDWR)
    try:
        return _try_lock(fd)
    finally:
        os.close(fd)


def _import_locked(body: dict, header: dict, identity: StoreIdentity, directory: Path,
                   replace: bool) -> tuple[StoreIdentity, Path | None]:
    kept = None
    if directory.exists() and any(p.name != SecretStore.LOCK for p in directory.iterdir()):
        if _same(directory, body):
            return identity, None
        if not replace:
            raise InvalidInput(f"a different secrets store is already at {directory}; nothing was imported. "
                               f"If it was made by mistake (a deploy refused, a render on this machine), "
                               f"import with --replace: it is kept aside, not deleted")
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        kept = directory.with_name(f"{directory.name}.replaced-{stamp}")
        os.replace(directory, kept)
    tmp = directory.with_name(f".{directory.name}.import{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "pki").mkdir(parents=True, mode=0o700)
    os.chmod(tmp, 0o700)
    for name, b64 in body["pki"].items():
        target = tmp / "pki" / name
        target.parent.mkdir(mode=0o700, exist_ok=True)
        atomic_write(target, base64.b64decode(b64), 0o644 if name.endswith(".crt") else 0o600)
    atomic_write(tmp / SecretStore.FILE,
                 (json.dumps(body["secrets"], indent=2, sort_keys=True) + "\n").encode())
    if directory.exists():          # empty (but for the lock file of a store opened once)
        (directory / SecretStore.LOCK).unlink(missing_ok=True)
        directory.rmdir()
    directory.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, directory)
    return identity, kept


def _same(directory: Path, body: dict) -> bool:
    try:
        store = SecretStore(directory, create=False)
    except Exception:  # noqa: BLE001 - an unreadable store is not the same store
        return False
    return _contents(store) == {"secrets": body["secrets"], "pki": body["pki"]}
