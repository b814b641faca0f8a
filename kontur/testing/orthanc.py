"""Real Orthanc processes on loopback for tests.

:class:`OrthancProcess` starts Debian's ``/usr/sbin/Orthanc`` with a
configuration given as a Python dict (written as JSON files into a temporary
directory), a SQLite index in that directory, free loopback ports and
``TCP_NODELAY=1``; it waits until ``/system`` answers, can ``restart()`` and
``kill9()``, and always stops the process it started by its PID (SIGTERM,
wait, SIGKILL) -- also when a test fails, from ``__exit__``, from the pytest
fixture's finaliser and, as a last resort, at interpreter exit.

    with OrthancProcess("lami", {"StableAge": 2}, tmp_path / "lami") as lami:
        lami.get("/system")
        lami.upload(dicom_bytes)

Orthanc 1.10 has no option to bind its HTTP or DICOM server to one address:
``RemoteAccessAllowed: false`` makes the HTTP server refuse other hosts and
tests only ever connect to 127.0.0.1.
"""
from __future__ import annotations

import atexit
import base64
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ..nodeapi import decode_body

ORTHANC_BIN = "/usr/sbin/Orthanc"
PLUGIN_DIR = "/usr/share/orthanc/plugins"
PYTHON_PLUGIN = f"{PLUGIN_DIR}/libOrthancPython.so"
DICOMWEB_PLUGIN = f"{PLUGIN_DIR}/libOrthancDicomWeb.so"
LOOPBACK = "127.0.0.1"

_LIVE: dict[int, "OrthancProcess"] = {}


#: every port free_port has handed out in this process: the kernel may give a just-closed ephemeral
#: port to the next bind, and two Orthancs given one port would look like one
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago and that this process has not handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def orthanc_available() -> bool:
    return os.access(ORTHANC_BIN, os.X_OK)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGKILL the child if the test process dies (no orphans)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class OrthancError(RuntimeError):
    pass


class HttpError(OrthancError):
    def __init__(self, method: str, url: str, status: int, body: bytes):
        super().__init__(f"{method} {url}: HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


class OrthancProcess:
    """One Orthanc process, configured from a dict, on loopback ports."""

    def __init__(self, name: str, config: dict[str, Any] | None = None,
                 workdir: str | Path | None = None, *,
                 aet: str | None = None,
                 username: str = "kontur", password: str = "kontur-test",
                 env: dict[str, str] | None = None,
                 startup_timeout: float = 60.0):
        import tempfile
        self.name = name
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"orthanc-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_dir = self.workdir / "config"
        self.db_dir = self.workdir / "db"
        self.log_path = self.workdir / "orthanc.log"
        self.aet = aet or name.upper().replace("-", "_")[:16]
        self.username = username
        self.password = password
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.user_config = dict(config or {})
        self.proc: subprocess.Popen | None = None
        self._log_fh = None
        self.starts = 0

    # --- addresses --------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL with a trailing slash: http://127.0.0.1:PORT/"""
        return f"http://{LOOPBACK}:{self.http_port}/"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def auth_header(self) -> str:
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return f"Basic {token}"

    def modality_entry(self) -> dict[str, Any]:
        """This Orthanc as an entry of another node's DicomModalities."""
        return {"AET": self.aet, "Host": LOOPBACK, "Port": self.dicom_port}

    def peer_entry(self, username: str | None = None, password: str | None = None) -> dict[str, Any]:
        return {"Url": self.url, "Username": username or self.username,
                "Password": password or self.password}

    # --- configuration ----------------------------------------------------

    def effective_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(self.db_dir),
            "IndexDirectory": str(self.db_dir),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "DicomServerEnabled": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {self.username: self.password},
            "DefaultEncoding": "Utf8",
            "OverwriteInstances": False,
            "StoreMD5ForAttachments": True,
            "ExecuteLuaEnabled": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowEcho": True,
            "DicomCheckCalledAet": True,
            "SaveJobs": True,
            "HttpTimeout": 60,
            "HttpThreadsCount": 20,
        }
        user = dict(self.user_config)
        users = user.pop("RegisteredUsers", None)
        cfg.update(user)
        if users:
            cfg["RegisteredUsers"] = {**cfg["RegisteredUsers"], **users}
        return cfg

    def write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        for old in self.config_dir.glob("*.json"):
            old.unlink()
        (self.config_dir / "orthanc.json").write_text(
            json.dumps(self.effective_config(), indent=2, sort_keys=True, ensure_ascii=False) + "\n",
            encoding="utf-8")

    # --- life cycle -------------------------------------------------------

    def start(self) -> "OrthancProcess":
        if self.proc and self.proc.poll() is None:
            raise OrthancError(f"{self.name}: already running (pid {self.proc.pid})")
        for attempt in range(3):
            self.write_config()
            self._spawn()
            try:
                self._wait_ready()
                return self
            except OrthancError:
                log = self.log_tail()
                self._reap()
                if attempt < 2 and any(said in log.lower() for said in ("already in use", "cannot bind")):
                    self.http_port, self.dicom_port = free_port(), free_port()
                    continue
                raise
        raise OrthancError(f"{self.name}: could not start")  # pragma: no cover

    def _spawn(self) -> None:
        env = dict(os.environ)
        env["TCP_NODELAY"] = "1"
        env.update(self.extra_env)
        self._log_fh = open(self.log_path, "ab")
        self._log_fh.write(f"\n===== kontur.testing: start #{self.starts + 1} =====\n".encode())
        self._log_fh.flush()
        self.proc = subprocess.Popen(
            [ORTHANC_BIN, str(self.config_dir)],
            stdin=subprocess.DEVNULL, stdout=self._log_fh, stderr=subprocess.STDOUT,
            env=env, cwd=str(self.workdir), preexec_fn=_die_with_parent)
        self.starts += 1
        _LIVE[self.proc.pid] = self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        expected = self.effective_config()   # a test's own config may name the node otherwise
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OrthancError(
                    f"{self.name}: Orthanc exited with code {self.proc.returncode} while starting:\n"
                    f"{self.log_tail()}")
            try:
                system = self.get("/system", timeout=2)
            except (OSError, OrthancError):
                time.sleep(0.1)
                continue
            if (system.get("Name"), system.get("DicomPort")) == (expected.get("Name"), expected.get("DicomPort")):
                return
            # another Orthanc answers on our port: ours cannot bind it and is about to exit (then the
            # loop above sees it and start() retries on new ports)
            time.sleep(0.1)
        raise OrthancError(f"{self.name}: /system did not answer within {self.startup_timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def _reap(self) -> None:
        if self.proc is None:
            return
        pid = self.proc.pid
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)
        _LIVE.pop(pid, None)
        if self._log_fh:
            self._log_fh.close()
            self._log_fh = None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code (None if not running)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
            except ProcessLookupError:
                pass
        code = self.proc.returncode
        self._reap()
        return code

    def kill9(self) -> None:
        """SIGKILL the Orthanc process (a crash, a power cut of the service)."""
        if self.proc is None or self.proc.poll() is not None:
            raise OrthancError(f"{self.name}: not running")
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reap()

    def restart(self, config: dict[str, Any] | None = None) -> "OrthancProcess":
        """Stop (gracefully) and start again with the same directory and ports;
        ``config`` (if given) is merged into the configuration first."""
        self.stop()
        if config:
            self.user_config.update(config)
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "OrthancProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # --- REST -------------------------------------------------------------

    def request(self, method: str, path: str, body: bytes | str | dict | list | None = None, *,
                timeout: float = 60, content_type: str | None = None, raw: bool = False) -> Any:
        url = self.url.rstrip("/") + "/" + path.lstrip("/")
        data = None
        headers = {"Authorization": self.auth_header}
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif isinstance(body, str):
            data = body.encode()
        elif body is not None:
            data = body
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raise HttpError(method, url, exc.code, exc.read()) from None
        return payload if raw else decode_body(payload)

    def get(self, path: str, **kw) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw) -> Any:
        return self.request("POST", path, body if body is not None else b"", **kw)

    def put(self, path: str, body: Any = None, **kw) -> Any:
        return self.request("PUT", path, body if body is not None else b"", **kw)

    def delete(self, path: str, **kw) -> Any:
        return self.request("DELETE", path, **kw)

    def upload(self, dicom: bytes) -> dict:
        """POST /instances with DICOM bytes; returns Orthanc's answer."""
        return self.post("/instances", dicom, content_type="application/dicom")

    # --- small queries tests need often ------------------------------------

    def study_ids(self) -> list[str]:
        return list(self.get("/studies"))

    def instance_ids(self) -> list[str]:
        return list(self.get("/instances"))

    def sop_uids_of_study(self, study_id: str) -> set[str]:
        try:
            instances = self.get(f"/studies/{study_id}/instances")
        except HttpError as exc:
            if exc.status == 404:
                return set()
            raise
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}

    def all_sop_uids(self) -> list[str]:
        """Every SOP Instance UID held, with repetitions (to detect duplicates)."""
        out = []
        for study in self.study_ids():
            out += [i["MainDicomTags"]["SOPInstanceUID"] for i in self.get(f"/studies/{study}/instances")]
        return out

    def statistics(self) -> dict:
        return self.get("/statistics")


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value (returned) or time runs out."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {message}{extra}")
        time.sleep(interval)


@atexit.register
def _stop_all() -> None:  # pragma: no cover - safety net
    for proc in list(_LIVE.values()):
        try:
            proc.stop(timeout=10)
        except Exception:  # noqa: BLE001
            pass
