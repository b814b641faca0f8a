"""The secrets store: passwords and keys kontur generates once.

The inventory never holds a secret; it names who needs one (a user, a node's
database role, a peer link) and the store holds the value.  The store is a
directory readable only by its owner (0700) with one JSON file of passwords
(0600) and a ``pki/`` folder: the regional CA (``pki/ca.crt``, ``pki/ca.key``),
the nodes' certificates (``pki/nodes/``), the operator's (``pki/operator/``)
and the users' (``pki/users/``) -- separate folders, so no node name can
overwrite the CA or the operator's key.  A store of an older kontur (node
certificates beside the CA) is moved into this layout when it is opened.

Every write happens under an exclusive lock (``flock`` on ``.lock`` in the
store) and re-reads the store first, so two kontur commands at once never
lose a password or issue a certificate from a CA the store no longer has.
Writes are atomic (temporary file, fsync, rename), so an interrupted run never
leaves a half-written store.  Once generated, a secret never changes unless
it is rotated on purpose: rendering stays deterministic.
"""
from __future__ import annotations

import fcntl
import json
import os
import secrets as _random
import stat
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import InvalidInput, OperationFailed
from .files import atomic_write


def default_dir(region_name: str, lab: bool = False) -> Path:
    if lab:
        from .lab.config import lab_dir  # noqa: PLC0415 - one definition of where the lab lives
        return lab_dir() / "secrets"
    base = os.environ.get("KONTUR_SECRETS")
    if base:
        return Path(base)
    home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return home / "kontur" / "secrets" / region_name


def store_dir(region_name: str, secrets_dir: str | Path | None = None, *, lab: bool = False) -> Path:
    """Where a command finds the region's store: ``--secrets DIR`` when given,
    else :func:`default_dir` (the lab's, or this user's)."""
    return Path(secrets_dir) if secrets_dir else default_dir(region_name, lab=lab)


#: the store's own random id, made once (not a secret: it names the store)
STORE_ID_KEY = "store/id"

#: the CA's files, directly in pki/
CA_FILES = ("ca.crt", "ca.key")
#: the operator's client certificate (pki/operator/)
OPERATOR = "kontur-operator"


def layout_name(name: str) -> str:
    """Where a file of an older store's flat ``pki/`` folder belongs now
    (relative to ``pki/``): the CA stays, the operator's goes to ``operator/``,
    every other certificate and key (a node's) to ``nodes/``."""
    if "/" in name or name in CA_FILES:
        return name
    stem = name.rsplit(".", 1)[0]
    return f"operator/{name}" if stem == OPERATOR else f"nodes/{name}"


def _warn(message: str) -> None:
    print(f"kontur: warning: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class StoreIdentity:
    ca_sha256: str
    store_id: str
    #: other CAs a node may have been deployed with: the predecessor during a
    #: CA rotation (kontur.rotation); not part of the record
    accepts: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, str]:
        return {"ca_sha256": self.ca_sha256, "store_id": self.store_id}


class SecretStore:
    """Get-or-create access to the region's secrets."""

    FILE = "secrets.json"
    #: every key the store ever made, one a line: a key missing from FILE but
    #: named here was deleted (it is made again, with a warning)
    MADE = "made.txt"
    LOCK = ".lock"

    def __init__(self, directory: str | Path, *, create: bool = True):
        self.dir = Path(directory)
        if not self.dir.exists():
            if not create:
                raise InvalidInput(f"secrets store {self.dir} does not exist; run `kontur render` once to create it")
            self.dir.mkdir(parents=True, mode=0o700, exist_ok=True)     # another kontur may make it now
        if not self.dir.is_dir():
            raise InvalidInput(f"secrets store {self.dir} is not a directory")
        st = self.dir.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise OperationFailed(
                f"secrets store {self.dir} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"expected 0700: run `chmod 700 {self.dir}` and check who copied it")
        self._path = self.dir / self.FILE
        self._guard = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None
        with self.locked():
            self._migrate()
            self._data: dict[str, str] = self._read()
            if not (self.dir / self.MADE).exists() and self._data:
                self._record_made(self._data)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock (re-entrant within this object):
        every write, and every read that decides whether to write, is made
        under it."""
        with self._guard:
            if self._depth == 0:
                try:
                    fd = os.open(self.dir / self.LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                except OSError as exc:
                    raise OperationFailed(f"secrets store {self.dir}: cannot open its lock file "
                                          f"({exc.strerror})") from None
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    os.close(self._lock_fd)
                    self._lock_fd = None

    def _migrate(self) -> None:
        """An older kontur kept node certificates beside the CA in ``pki/``
        (a node named ``ca`` overwrote the CA): move them to ``pki/nodes/``
        (the operator's to ``pki/operator/``).  Idempotent; under the lock."""
        pki = self.dir / "pki"
        if not pki.is_dir():
            return
        for path in sorted(pki.iterdir()):
            if path.name.startswith(".") or path.name in CA_FILES or path.is_symlink() or not path.is_file():
                continue
            if not path.name.endswith((".crt", ".key")):
                continue
            dest = pki / layout_name(path.name)
            dest.parent.mkdir(mode=0o700, exist_ok=True)
            if dest.exists():
                continue        # already moved once (the new layout's file wins); left for the operator
            os.rename(path, dest)

    def _read(self) -> dict[str, str]:
        if not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OperationFailed(f"secrets store {self._path} cannot be read ({exc}); restore it from backup") from None
        if not isinstance(data, dict):
            raise OperationFailed(f"secrets store {self._path} is not a JSON object; restore it from backup")
        for key, value in data.items():
            if not isinstance(value, str):
                raise OperationFailed(f"secrets store {self._path}: {key!r} holds {type(value).__name__} "
                                      f"{json.dumps(value)[:40]}, not a password string; restore the file from "
                                      f"backup (or `kontur secrets import`) or correct that entry by hand")
        return data

    def _save(self) -> None:
        atomic_write(self._path, (json.dumps(self._data, indent=2, sort_keys=True) + "\n").encode())

    def _made(self) -> set[str]:
        try:
            return set((self.dir / self.MADE).read_text(encoding="utf-8").splitlines())
        except FileNotFoundError:
            return set()

    def _record_made(self, keys) -> None:
        made = self._made() | set(keys)
        atomic_write(self.dir / self.MADE, "".join(f"{k}\n" for k in sorted(made)).encode())

    def password(self, key: str, length: int = 24) -> str:
        """The password stored under ``key`` (e.g. ``users/ivanova``), made on first use."""
        if key in self._data:
            return self._data[key]
        with self.locked():
            self._data = self._read()          # another kontur may have made it meanwhile
            if key not in self._data:
                if key in self._made():
                    _warn(f"the secret {key!r} was deleted from {self._path}; made a new one: whatever used "
                          f"the old one (a node's account or link) gets the new one at its next deploy")
                self._data[key] = _random.token_urlsafe(length)
                self._save()
                self._record_made([key])
            return self._data[key]

    def replace_password(self, key: str, value: str) -> None:
        """Store a new ``value`` under an existing ``key`` (kontur.rotation: audited there)."""
        with self.locked():
            self._data = self._read()
            if key not in self._data:
                raise KeyError(key)
            self._data[key] = value
            self._save()

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def keys(self) -> list[str]:
        return sorted(self._data)

    def identity(self, region_title: str) -> "StoreIdentity":
        """What a deployed node records of the store it was deployed from: the
        regional CA's fingerprint and the store's own random id (made with the
        store's first secret; a store regenerated after a loss has another)."""
        from .pki import ensure_ca, fingerprint
        from .rotation import accepted
        ca = ensure_ca(self, region_title)
        return StoreIdentity(ca_sha256=fingerprint(ca.cert_pem), store_id=self.password(STORE_ID_KEY, 12),
                             accepts=accepted(self))

    @property
    def pki_dir(self) -> Path:
        """``pki/``: the regional CA's files (``ca.crt``, ``ca.key``)."""
        p = self.dir / "pki"
        p.mkdir(mode=0o700, exist_ok=True)
        return p

    def pki_subdir(self, name: str) -> Path:
        """``pki/nodes``, ``pki/operator``, ``pki/users`` or ``pki/revocation`` (kontur.revocation)."""
        p = self.pki_dir / name
        p.mkdir(mode=0o700, exist_ok=True)
        return p
