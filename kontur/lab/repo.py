"""The lab's apt repository: every package a node may need plus its
dependency closure, downloaded once by this machine's apt, signed with a key
the lab generates, cached, and served over HTTP on the bridge address.

Hosts trust that key alone (``signed-by=``): a closed regional network's own
mirror works the same way, so deploys exercise the production path.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import OperationFailed
from ..packages import NODE_PACKAGES
from .base import arch, base_path, cache_lock, debian_sources, mirror
from .config import BRIDGE_ADDRESS, HOST_KEYRING, SUITE, cache_dir
from .fs import remove_tree
from .proc import Started, alive, run, spawn, tail

log = logging.getLogger("kontur.lab")

#: packages the lab repository carries besides NODE_PACKAGES (deploys may extend
#: this list; a change rebuilds the repository on the next ``lab up``)
EXTRA_PACKAGES: list[str] = []

KEY_NAME = "kontur lab repository"


def repo_packages() -> list[str]:
    return sorted(set(NODE_PACKAGES) | set(EXTRA_PACKAGES))


@dataclass
class Repo:
    path: Path
    keyring: Path           # the public key (binary OpenPGP) hosts install as HOST_KEYRING
    fingerprint: str

    def url(self, port: int) -> str:
        return f"http://{BRIDGE_ADDRESS}:{port}/"

    def source_line(self, port: int) -> str:
        return f"deb [signed-by={HOST_KEYRING}] {self.url(port)} ./"


def repo_path() -> Path:
    return cache_dir() / "repo"


def _stamp_path() -> Path:
    return cache_dir() / "repo.json"


def _gnupg_home() -> Path:
    return cache_dir() / "gnupg"


def _gpg(*args: str, what: str, input: str | None = None):
    env = dict(os.environ, GNUPGHOME=str(_gnupg_home()))
    return run(["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "", *args],
               env=env, what=what, input=input)


def _stop_gpg_agent() -> None:
    """gpg starts an agent for its home; end it (it is ours, found by its home)."""
    env = dict(os.environ, GNUPGHOME=str(_gnupg_home()))
    run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)


def _signing_key() -> tuple[str, Path]:
    """(fingerprint, public key file) of the lab's key, generated on first use."""
    home = _gnupg_home()
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    keyring = cache_dir() / "kontur-lab.gpg"

    def fingerprint() -> str | None:
        cp = _gpg("--with-colons", "--list-secret-keys", what="listing the lab's signing key")
        for line in cp.stdout.splitlines():
            if line.startswith("fpr:"):
                return line.split(":")[9]
        return None

    fpr = fingerprint()
    if fpr is None:
        _gpg("--quick-gen-key", KEY_NAME, "ed25519", "sign", "never",
             what="generating the lab's repository signing key")
        fpr = fingerprint()
        if fpr is None:
            raise OperationFailed("gpg made no signing key for the lab repository")
    if not keyring.exists():
        cp = run(["gpg", "--batch", "--no-tty", "--export", fpr],
                 env=dict(os.environ, GNUPGHOME=str(home)), input=b"", what="exporting the lab's key")
        keyring.write_bytes(cp.stdout)
    return fpr, keyring


def _wanted_stamp(fpr: str) -> dict:
    base_stamp = json.loads((cache_dir() / f"base-{SUITE}.json").read_text())
    return {"packages": repo_packages(), "key": fpr, "arch": arch(),
            "base_built": base_stamp.get("built"), "format": 1}


def ensure_repo(progress=lambda msg: None) -> Repo:
    """The cached signed repository, (re)built when the package list, the key or the base changed."""
    with cache_lock():
        try:
            fpr, keyring = _signing_key()
            wanted = _wanted_stamp(fpr)
            try:
                current = json.loads(_stamp_path().read_text())
            except (OSError, ValueError):
                current = None
            if current is None or {k: current.get(k) for k in wanted} != wanted \
                    or not (repo_path() / "InRelease").exists():
                _build(fpr, progress)
                _stamp_path().write_text(json.dumps(wanted | {"built": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                                    indent=2) + "\n")
        finally:
            _stop_gpg_agent()
    return Repo(repo_path(), keyring, fpr)


def _build(fpr: str, progress) -> None:
    pkgs = repo_packages()
    work = cache_dir() / "apt"
    tmp = cache_dir() / ".repo.building"
    remove_tree(tmp)
    for d in (work / "lists" / "partial", work / "cache" / "archives" / "partial",
              work / "sources.list.d", work / "preferences.d", tmp / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    pairs = debian_sources()
    if not pairs:
        src = mirror()
        pairs = [(src, SUITE)]
    (work / "sources.list").write_text("".join(src.line(suite) + "\n" for src, suite in pairs))
    base = base_path()
    opts = [
        "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={work / 'sources.list.d'}",
        "-o", f"Dir::Etc::PreferencesParts={work / 'preferences.d'}",
        "-o", f"Dir::Etc::Preferences={work / 'preferences'}",
        "-o", f"Dir::State::Lists={work / 'lists'}",
        "-o", f"Dir::State::extended_states={work / 'extended_states'}",
        # resolve against the bare base: what a fresh lab host lacks is downloaded
        "-o", f"Dir::State::status={base / 'var/lib/dpkg/status'}",
        "-o", f"Dir::Cache={work / 'cache'}",
        "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
        "-o", "APT::Get::AllowUnauthenticated=false",
        "-o", "Debug::NoLocking=true",
    ]
    progress(f"building the lab's package repository ({len(pkgs)} packages and their dependencies); "
             f"once, then cached in {repo_path()}")
    try:
        run(["apt-get", "-q", *opts, "update"], timeout=1800, what="apt-get update for the lab repository")
        run(["apt-get", "-q", "-y", *opts, "-o", f"Dir::Cache::archives={tmp}",
             "install", "--download-only", *pkgs], timeout=3600,
            what="downloading the lab repository's packages")
        remove_tree(tmp / "partial")
        (tmp / "lock").unlink(missing_ok=True)
        debs = sorted(tmp.glob("*.deb"))
        if not debs:
            raise OperationFailed("apt downloaded no packages for the lab repository")
        (tmp / "Packages").write_text(_scan(tmp))
        release = _release_text(tmp, ["Packages"])
        (tmp / "Release").write_text(release)
        env = dict(os.environ, GNUPGHOME=str(_gnupg_home()))
        for args in (["--clearsign", "-o", str(tmp / "InRelease")],
                     ["--detach-sign", "--armor", "-o", str(tmp / "Release.gpg")]):
            run(["gpg", "--batch", "--no-tty", "--yes", "--pinentry-mode", "loopback", "--passphrase", "",
                 "--local-user", fpr, *args, str(tmp / "Release")], env=env, what="signing the lab repository")
        remove_tree(repo_path())
        os.replace(tmp, repo_path())
    except BaseException:
        remove_tree(tmp)
        raise


def _scan(directory: Path) -> str:
    """``dpkg-scanpackages -m .`` in ``directory`` (Debian's dpkg-dev)."""
    argv = ["dpkg-scanpackages", "-m", "."]
    log.debug("run: %s (in %s)", " ".join(argv), directory)
    try:
        cp = subprocess.run(argv, cwd=directory, capture_output=True, text=True, timeout=600, check=False)
    except FileNotFoundError:
        raise OperationFailed("dpkg-scanpackages is not installed",
                              hint="install Debian's dpkg-dev package") from None
    if cp.returncode != 0:
        raise OperationFailed(f"dpkg-scanpackages failed (exit {cp.returncode}): {cp.stderr.strip()[-1000:]}")
    return cp.stdout


def _release_text(directory: Path, files: list[str]) -> str:
    """A Release file for a flat repository, with the hashes apt checks."""
    sums: dict[str, list[str]] = {"MD5Sum": [], "SHA1": [], "SHA256": [], "SHA512": []}
    algos = {"MD5Sum": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
    for name in files:
        data = (directory / name).read_bytes()
        for field, algo in algos.items():
            sums[field].append(f" {hashlib.new(algo, data).hexdigest()} {len(data)} {name}")
    head = [
        "Origin: kontur lab",
        "Label: kontur lab",
        "Suite: lab",
        "Codename: lab",
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S UTC', time.gmtime())}",
        f"Architectures: {arch()} all",
        f"Description: kontur lab repository: Debian {SUITE} packages for lab hosts",
    ]
    body = []
    for field, lines in sums.items():
        body.append(f"{field}:")
        body.extend(lines)
    return "\n".join(head + body) + "\n"


#: no proxy from the environment: the bridge is reached directly, nothing else is
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def serve(repo: Repo, port: int, logfile: Path, pidfile: Path | None = None,
          served: Path | None = None) -> Started:
    """Start the HTTP server for the repository on the bridge address (detached),
    and wait until *it* serves the signed index.

    + served: a symbolic link to the repository that the server serves instead
      (:func:`set_served` re-points it, e.g. to a variant with packages withheld)
    """
    root = repo.path
    if served is not None:
        _point(served, repo.path)
        root = served
    started = spawn([sys.executable, "-m", "http.server", str(port), "--bind", BRIDGE_ADDRESS,
                     "--directory", str(root)], logfile, what="the lab repository's HTTP server",
                    pidfile=pidfile)
    url = f"{repo.url(port)}InRelease"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if not alive(started.pid, started.start_time):
            raise OperationFailed(
                f"the lab repository's HTTP server on {BRIDGE_ADDRESS}:{port} stopped: {tail(logfile, 1)}",
                hint="another program holds the port; set KONTUR_LAB_REPO_PORT to a free one")
        try:
            with _DIRECT.open(url, timeout=1) as r:
                if r.status == 200 and alive(started.pid, started.start_time):
                    return started
        except OSError:
            pass
        time.sleep(0.1)
    raise OperationFailed(f"the lab repository's HTTP server does not serve {url}:\n{tail(logfile)}")


# --- a mirror that lacks packages -------------------------------------------------

def _point(link: Path, target: Path) -> None:
    """Make ``link`` a symbolic link to ``target``, atomically (the server never
    sees a missing root)."""
    tmp = link.with_name(link.name + ".new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _stanzas(packages_text: str) -> list[dict[str, str]]:
    """The ``Packages`` index as a list of {field: value} (first line of each field)
    plus the stanza's text under ``""``."""
    out = []
    for block in packages_text.strip("\n").split("\n\n"):
        fields = {"": block}
        for line in block.splitlines():
            if line and not line[0].isspace() and ":" in line:
                k, _, v = line.partition(":")
                fields[k] = v.strip()
        out.append(fields)
    return out


def repo_package_names(repo_dir: Path) -> set[str]:
    return {st.get("Package", "") for st in _stanzas((repo_dir / "Packages").read_text())} - {""}


def build_variant(repo: Repo, withheld: list[str], dest: Path) -> Path:
    """A copy of ``repo`` (symbolic links to its .deb files) that lacks the
    ``withheld`` packages, with its own index signed by the lab's key: what a
    regional mirror that does not carry them looks like to a host."""
    names = repo_package_names(repo.path)
    unknown = sorted(set(withheld) - names)
    if unknown:
        from ..errors import InvalidInput
        raise InvalidInput(f"the lab repository carries no package named {', '.join(unknown)}",
                           hint="name a package it carries, e.g. " + ", ".join(sorted(NODE_PACKAGES)[:4]))
    tmp = dest.with_name(dest.name + ".building")
    remove_tree(tmp)
    tmp.mkdir(parents=True)
    kept = []
    for st in _stanzas((repo.path / "Packages").read_text()):
        if st.get("Package") in withheld:
            continue
        filename = st.get("Filename", "")
        deb = (repo.path / filename).resolve()
        if not filename or repo.path.resolve() not in deb.parents:
            raise OperationFailed(f"the lab repository's index names a file outside it: {filename!r}")
        (tmp / deb.name).symlink_to(deb)
        kept.append(st[""])
    (tmp / "Packages").write_text("\n\n".join(kept) + "\n")
    (tmp / "Release").write_text(_release_text(tmp, ["Packages"]))
    with cache_lock():
        try:
            env = dict(os.environ, GNUPGHOME=str(_gnupg_home()))
            for args in (["--clearsign", "-o", str(tmp / "InRelease")],
                         ["--detach-sign", "--armor", "-o", str(tmp / "Release.gpg")]):
                run(["gpg", "--batch", "--no-tty", "--yes", "--pinentry-mode", "loopback", "--passphrase", "",
                     "--local-user", repo.fingerprint, *args, str(tmp / "Release")], env=env,
                    what="signing the lab repository variant")
        finally:
            _stop_gpg_agent()
    remove_tree(dest)
    os.replace(tmp, dest)
    return dest


def set_served(served: Path, target: Path) -> None:
    """Serve ``target`` (the full repository or a variant) from now on.  Its index
    is made newer than the one served so far: apt asks with If-Modified-Since (whole
    seconds), and an index that looks older would never be fetched."""
    try:
        before = int((served / "InRelease").stat().st_mtime)
    except OSError:
        before = 0
    if int((target / "InRelease").stat().st_mtime) <= before:
        for name in ("InRelease", "Release", "Release.gpg", "Packages"):
            os.utime(target / name, (before + 1, before + 1))
    _point(served, target)
