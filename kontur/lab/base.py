"""The base root filesystem every lab host starts from, built once with
debootstrap and cached: a bare Debian with systemd, sshd and Python only.
Orthanc, PostgreSQL, nginx and the rest come later, from kontur's deploys.

The mirror is the one this machine's own apt uses (its sources), so the lab
works wherever apt works; ``KONTUR_LAB_MIRROR`` overrides it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OperationFailed
from .config import BASE_INCLUDE, SUITE, cache_dir
from .fs import remove_tree
from .proc import run

log = logging.getLogger("kontur.lab")

APT_SOURCES = Path("/etc/apt")


@dataclass
class AptSource:
    """One ``deb`` source of this machine's apt configuration."""
    uri: str
    suites: list[str]
    components: list[str]
    signed_by: str | None = None
    options: dict[str, str] = field(default_factory=dict)

    def line(self, suite: str) -> str:
        opts = f"[signed-by={self.signed_by}] " if self.signed_by else ""
        return f"deb {opts}{self.uri} {suite} {' '.join(self.components)}"


def _parse_deb822(text: str) -> list[AptSource]:
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and key:
                fields[key] += "\n" + line.strip()
                continue
            if ":" in line:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").lower() == "no":
            continue
        signed = fields.get("signed-by")
        if signed and "\n" in signed:      # an inline key block: keep the default keyring
            signed = None
        for uri in fields.get("uris", "").split():
            out.append(AptSource(uri, fields.get("suites", "").split(),
                                 fields.get("components", "").split(), signed))
    return out


def _parse_one_line(text: str) -> list[AptSource]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        opts: dict[str, str] = {}
        m = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
        if m:
            for part in m.group(1).split():
                k, _, v = part.partition("=")
                opts[k] = v
            rest = m.group(2).split()
        else:
            rest = line.split()[1:]
        if len(rest) < 2:
            continue
        out.append(AptSource(rest[0], [rest[1]], rest[2:], opts.get("signed-by"), opts))
    return out


def host_sources(root: Path = APT_SOURCES) -> list[AptSource]:
    """The ``deb`` sources of this machine's apt (deb822 and one-line formats)."""
    sources: list[AptSource] = []
    one_line = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    for p in sorted((root / "sources.list.d").glob("*.sources")):
        sources += _parse_deb822(p.read_text(errors="replace"))
    for p in one_line:
        if p.is_file():
            sources += _parse_one_line(p.read_text(errors="replace"))
    return sources


def debian_sources(suite: str = SUITE, root: Path = APT_SOURCES) -> list[tuple[AptSource, str]]:
    """(source, suite) pairs for ``suite`` and its -updates and -security, main only."""
    wanted = (suite, f"{suite}-updates", f"{suite}-security")
    pairs = []
    for src in host_sources(root):
        if "main" not in src.components:
            continue
        for s in src.suites:
            if s in wanted:
                pairs.append((AptSource(src.uri, [s], ["main"], src.signed_by), s))
    return pairs


def mirror(suite: str = SUITE) -> AptSource:
    """The Debian mirror to build from: ``KONTUR_LAB_MIRROR`` or this machine's apt source."""
    env = os.environ.get("KONTUR_LAB_MIRROR")
    if env:
        return AptSource(env, [suite], ["main"])
    for src, s in debian_sources(suite):
        if s == suite:
            return src
    raise OperationFailed(
        f"no apt source for Debian {suite} (main) on this machine (looked in {APT_SOURCES}/sources.list "
        "and sources.list.d); the lab builds its hosts from the mirror this machine uses",
        hint="add one, or set KONTUR_LAB_MIRROR to a Debian mirror URL")


def arch() -> str:
    return run(["dpkg", "--print-architecture"], what="asking dpkg for the architecture").stdout.strip()


@contextmanager
def cache_lock() -> Iterator[None]:
    """One builder of the cache at a time."""
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def base_path() -> Path:
    return cache_dir() / f"base-{SUITE}"


def _stamp_path() -> Path:
    return cache_dir() / f"base-{SUITE}.json"


def _wanted_stamp() -> dict:
    return {"suite": SUITE, "include": list(BASE_INCLUDE), "arch": arch(), "format": 1}


def base_is_current() -> bool:
    try:
        stamp = json.loads(_stamp_path().read_text())
    except (OSError, ValueError):
        return False
    return base_path().is_dir() and {k: stamp.get(k) for k in _wanted_stamp()} == _wanted_stamp()


def ensure_base(progress=lambda msg: None) -> Path:
    """The cached base root filesystem, built first if missing or outdated."""
    if base_is_current():
        return base_path()
    with cache_lock():
        if base_is_current():
            return base_path()
        return _build_base(progress)


def _build_base(progress) -> Path:
    src = mirror()
    final, tmp = base_path(), cache_dir() / f".base-{SUITE}.building"
    remove_tree(tmp)
    logdir = cache_dir() / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    progress(f"building the base root filesystem (Debian {SUITE}: systemd, sshd, Python) "
             f"from {src.uri}; once, then cached in {final}")
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_INCLUDE)}"]
    if src.signed_by and Path(src.signed_by).is_file():
        argv.append(f"--keyring={src.signed_by}")
    argv += [SUITE, str(tmp), src.uri]
    t0 = time.monotonic()
    try:
        cp = run(argv, check=False, timeout=3600)
        (logdir / "debootstrap.log").write_text((cp.stdout or "") + (cp.stderr or ""))
        if cp.returncode != 0:
            tail = "\n".join(((cp.stdout or "") + (cp.stderr or "")).strip().splitlines()[-15:])
            raise OperationFailed(
                f"debootstrap failed (exit {cp.returncode}); log: {logdir / 'debootstrap.log'}\n{tail}")
        _finish_base(tmp)
        stamp = _wanted_stamp() | {"mirror": src.uri, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                   "seconds": round(time.monotonic() - t0, 1)}
        remove_tree(final)
        os.replace(tmp, final)
        _stamp_path().write_text(json.dumps(stamp, indent=2) + "\n")
    except BaseException:
        remove_tree(tmp)
        raise
    return final


def _finish_base(root: Path) -> None:
    """Make the fresh tree a neutral template: no host keys, no machine id,
    no apt sources, no DNS -- each host gets its own, the lab its own apt."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_file() and not dbus_id.is_symlink():
        dbus_id.unlink()
    (root / "etc/apt/sources.list").write_text(
        "# kontur lab: hosts get their packages from the lab's signed repository on the\n"
        "# bridge; kontur's deploys configure it (see the lab state's apt.source_line).\n")
    resolv = root / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# kontur lab: no DNS; lab host names are in /etc/hosts\n")
    (root / "etc/hostname").write_text("localhost\n")
    lists = root / "var/lib/apt/lists"
    if lists.is_dir():
        for p in lists.iterdir():
            if p.is_file() and p.name != "lock":
                p.unlink()
    for p in (root / "var/cache/apt").glob("*.bin"):
        p.unlink()
