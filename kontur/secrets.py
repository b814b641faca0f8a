"""The secrets store: passwords and keys kontur generates once.

The inventory never holds a secret; it names who needs one (a user, a node's
database role, a peer link) and the store holds the value.  The store is a
directory readable only by its owner (0700) with one JSON file of passwords
(0600) and a ``pki/`` folder for the regional CA and node certificates.
Writes are atomic (temporary file, fsync, rename), so an interrupted run never
leaves a half-written store.  Once generated, a secret never changes unless
it is rotated on purpose: rendering stays deterministic.
"""
from __future__ import annotations

import json
import os
import secrets as _random
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidInput, OperationFailed


def default_dir(region_name: str, lab: bool = False) -> Path:
    if lab:
        return Path(os.environ.get("KONTUR_LAB_DIR", "/var/lib/kontur/lab")) / "secrets"
    base = os.environ.get("KONTUR_SECRETS")
    if base:
        return Path(base)
    home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share"))
    return home / "kontur" / "secrets" / region_name


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


#: the store's own random id, made once (not a secret: it names the store)
STORE_ID_KEY = "store/id"


@dataclass(frozen=True)
class StoreIdentity:
    ca_sha256: str
    store_id: str

    def as_dict(self) -> dict[str, str]:
        return {"ca_sha256": self.ca_sha256, "store_id": self.store_id}


class SecretStore:
    """Get-or-create access to the region's secrets."""

    FILE = "secrets.json"

    def __init__(self, directory: str | Path, *, create: bool = True):
        self.dir = Path(directory)
        if not self.dir.exists():
            if not create:
                raise InvalidInput(f"secrets store {self.dir} does not exist; run `kontur render` once to create it")
            self.dir.mkdir(parents=True, mode=0o700)
        if not self.dir.is_dir():
            raise InvalidInput(f"secrets store {self.dir} is not a directory")
        st = self.dir.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise OperationFailed(
                f"secrets store {self.dir} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"expected 0700: run `chmod 700 {self.dir}` and check who copied it")
        self._path = self.dir / self.FILE
        self._data: dict[str, str] = self._read()

    def _read(self) -> dict[str, str]:
        if not self._path.exists():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OperationFailed(f"secrets store {self._path} cannot be read ({exc}); restore it from backup") from None
        if not isinstance(data, dict):
            raise OperationFailed(f"secrets store {self._path} is not a JSON object; restore it from backup")
        return data

    def _save(self) -> None:
        atomic_write(self._path, (json.dumps(self._data, indent=2, sort_keys=True) + "\n").encode())

    def password(self, key: str, length: int = 24) -> str:
        """The password stored under ``key`` (e.g. ``users/ivanova``), made on first use."""
        if key not in self._data:
            self._data[key] = _random.token_urlsafe(length)
            self._save()
        return self._data[key]

    def get(self, key: str) -> str | None:
        return self._data.get(key)

    def keys(self) -> list[str]:
        return sorted(self._data)

    def identity(self, region_title: str) -> "StoreIdentity":
        """What a deployed node records of the store it was deployed from: the
        regional CA's fingerprint and the store's own random id (made with the
        store's first secret; a store regenerated after a loss has another)."""
        from .pki import ensure_ca, fingerprint
        ca = ensure_ca(self, region_title)
        return StoreIdentity(ca_sha256=fingerprint(ca.cert_pem), store_id=self.password(STORE_ID_KEY, 12))

    @property
    def pki_dir(self) -> Path:
        p = self.dir / "pki"
        p.mkdir(mode=0o700, exist_ok=True)
        return p
