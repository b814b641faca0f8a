# SPDX-License-Identifier: AGPL-3.0-or-later
"""Files kontur writes on the control machine, written whole or not at all.

A temporary file in the same directory, fsynced, renamed over the target, and
the directory fsynced: a crash leaves the old file or the new one, never half
of one (the secrets store, the inventory, certificates, hand-over sheets,
node_exporter's textfile).
"""
from __future__ import annotations

import os
import stat
import tempfile
import threading
from pathlib import Path


def _sync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """``data`` into ``path`` with ``mode`` from the first byte; never written through a link."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")
    tmp.unlink(missing_ok=True)     # a crashed run's; never written through (O_EXCL, O_NOFOLLOW)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_dir(path.parent)


def replace_keeping_mode(real: Path, text: str) -> None:
    """Replace the file ``real`` (not a symlink: see :func:`kontur.inventory.locked`) with ``text``:
    a temporary file in the same directory, fsynced, renamed over it; the
    file's mode (and owner, where permitted) is kept.  A crash leaves the old
    file or the new one, never half of one."""
    st = os.stat(real)
    fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fchmod(fh.fileno(), stat.S_IMODE(st.st_mode))
            if os.geteuid() == 0:
                try:
                    os.fchown(fh.fileno(), st.st_uid, st.st_gid)
                except OSError:
                    pass
            os.fsync(fh.fileno())
        os.replace(tmp, real)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_dir(real.parent)
