"""Mounts and directory removal that never crosses into a mount."""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from ..errors import OperationFailed
from .proc import run

log = logging.getLogger("kontur.lab")


def _unescape(field: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal
    return (field.replace("\\040", " ").replace("\\011", "\t")
            .replace("\\012", "\n").replace("\\134", "\\"))


def mounts() -> list[str]:
    """Mount points of this mount namespace, in mount order."""
    with open("/proc/self/mounts") as f:
        return [_unescape(line.split()[1]) for line in f if line.strip()]


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    root = os.path.realpath(path)
    found = [m for m in mounts() if m == root or m.startswith(root.rstrip("/") + "/")]
    return sorted(set(found), key=lambda m: (-m.count("/"), m))


def is_mounted(path: Path) -> bool:
    return os.path.realpath(path) in mounts()


def umount(path: Path, what: str = "") -> None:
    """Unmount ``path`` and anything below it; retry, then detach lazily."""
    for m in mounts_under(path):
        for attempt in range(5):
            cp = run(["umount", m], check=False)
            if cp.returncode == 0 or m not in mounts():
                break
            time.sleep(0.2 * (attempt + 1))
        else:
            log.debug("%s is busy, detaching it lazily", m)
            run(["umount", "-l", m], what=f"unmounting {m}{' (' + what + ')' if what else ''}")


def remove_tree(path: Path) -> None:
    """``rm -r`` that refuses to run while anything below ``path`` is mounted."""
    if not os.path.lexists(path):
        return
    umount(path)
    left = mounts_under(path)
    if left:
        raise OperationFailed(f"cannot remove {path}: still mounted: {', '.join(left)}")
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
