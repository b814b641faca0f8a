# SPDX-License-Identifier: AGPL-3.0-or-later
"""Headless Chromium (Debian's ``chromium``) as the person at the screen:
it loads a page, optionally presenting a doctor's client certificate (the
``.p12`` that ``kontur users issue`` hands over), and gives the DOM after the
page's scripts ran, or a screenshot.

The certificate goes where a person's browser keeps it: an NSS database in
the browser's home (``pk12util``, Debian's ``libnss3-tools``), with the
regional CA trusted.  Headless Chromium cannot show the certificate picker,
so the profile says which certificate to present for the site (the
``auto_select_certificate`` setting, what the AutoSelectCertificateForUrls
policy sets) -- in the test's own profile, nothing machine-wide.  Without
it, Chromium waits for a choice forever.

Everything lives in one temporary directory, removed by :meth:`close`; each
run is its own process group, ended by its PID on a timeout.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM = shutil.which("chromium")


class BrowserError(RuntimeError):
    pass


class Chromium:
    def __init__(self, *, window: str = "1280,1400", budget_ms: int = 15000):
        if not CHROMIUM:
            raise BrowserError("Debian's chromium is missing: ./run setup installs it")
        self.dir = Path(tempfile.mkdtemp(prefix="kontur-chromium-"))
        self.home = self.dir / "home"
        self.profile = self.dir / "profile"
        (self.profile / "Default").mkdir(parents=True)
        self.home.mkdir()
        self.window, self.budget_ms = window, budget_ms
        self._sites: list[str] = []

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def nssdb(self) -> Path:
        return self.home / ".pki" / "nssdb"

    def _nss(self, *args: str) -> None:
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=60, env=self._env())
        if p.returncode != 0:
            raise BrowserError(f"{args[0]} failed: {(p.stderr or p.stdout).strip()[-500:]}")

    def trust_ca(self, ca_file: str | Path, name: str = "regional CA") -> None:
        self._init_db()
        self._nss("certutil", "-A", "-d", f"sql:{self.nssdb}", "-n", name, "-t", "C,,", "-i", str(ca_file))

    def import_p12(self, p12_file: str | Path, passphrase: str, site: str) -> None:
        """The person's certificate and key, presented to ``site`` (scheme://host:port)."""
        self._init_db()
        pw = self.dir / "p12.pass"
        pw.write_text(passphrase)
        pw.chmod(0o600)
        try:
            self._nss("pk12util", "-i", str(p12_file), "-d", f"sql:{self.nssdb}", "-w", str(pw))
        finally:
            pw.unlink()
        self._sites.append(site)
        prefs = {"profile": {"content_settings": {"exceptions": {"auto_select_certificate": {
            f"{s},*": {"setting": {"filters": [{}]}} for s in self._sites}}}}}
        (self.profile / "Default" / "Preferences").write_text(json.dumps(prefs))

    def _init_db(self) -> None:
        if not (self.nssdb / "cert9.db").exists():
            self.nssdb.mkdir(parents=True, exist_ok=True)
            self._nss("certutil", "-N", "-d", f"sql:{self.nssdb}", "--empty-password")

    def _env(self) -> dict:
        return {**os.environ, "HOME": str(self.home)}

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={self.profile}", f"--window-size={self.window}",
               f"--virtual-time-budget={self.budget_ms}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=self._env(), start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)        # our own process group, by its PID
            proc.communicate()
            raise BrowserError(f"chromium did not finish within {timeout:.0f} s "
                               "(a certificate it was asked for and could not choose?)") from None
        return subprocess.CompletedProcess(cmd, proc.returncode, out, err)

    def dom(self, url: str) -> str:
        """The page's DOM once its scripts ran; raises when the load failed."""
        p = self._run("--dump-dom", url)
        failed = [ln for ln in p.stderr.splitlines() if "Page load failed" in ln or "ERR_" in ln]
        if p.returncode != 0 or (failed and not p.stdout.strip()):
            raise BrowserError(f"chromium could not load {_safe(url)}: {(failed or [p.stderr[-500:]])[0]}")
        return p.stdout

    def screenshot(self, url: str, path: str | Path) -> Path:
        path = Path(path)
        p = self._run(f"--screenshot={path}", url)
        if p.returncode != 0 or not path.exists():
            raise BrowserError(f"chromium made no screenshot of {_safe(url)}: {p.stderr[-500:]}")
        return path


def _safe(url: str) -> str:
    """A URL without its password, for a message."""
    u = urlsplit(url)
    if u.password is None:
        return url
    return url.replace(f":{u.password}@", ":***@", 1)


def keep_artefact(path: str | Path, name: str) -> Path | None:
    """Copy a test artefact (a screenshot) to ``$KONTUR_ARTEFACTS`` when set (``./run test`` sets it)."""
    keep = os.environ.get("KONTUR_ARTEFACTS")
    if not keep:
        return None
    Path(keep).mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(path, Path(keep) / name))
