"""A throw-away PostgreSQL server on loopback for tests and benches.

Debian's PostgreSQL 15 binaries, a cluster made with ``initdb`` in a given
directory (owned by the ``postgres`` system user, since PostgreSQL refuses to
run as root), listening on 127.0.0.1 and a free port, trust authentication on
loopback only.  Stopped by its PID (``pg_ctl stop`` first, SIGKILL if it
hangs), also from ``__exit__``.

    with PostgresProcess(tmp / "pg") as pg:
        pg.create_database("orthanc")
        cfg = pg.orthanc_index("orthanc")      # the "PostgreSQL" section for Orthanc
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .orthanc import LOOPBACK, free_port

BIN = Path("/usr/lib/postgresql/15/bin")
PLUGIN = "/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so"


class PostgresProcess:
    def __init__(self, workdir: str | Path, user: str = "postgres", *, durable: bool = True):
        """``durable`` False: no fsync (a bench filling a generated archive fast)."""
        self.durable = durable
        self.workdir = Path(workdir)
        self.data = self.workdir / "data"
        self.user = user
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._pw = pwd.getpwnam(user)

    def _as_user(self):
        uid, gid = self._pw.pw_uid, self._pw.pw_gid

        def demote():  # pragma: no cover - runs in the child
            os.setgid(gid)
            os.setuid(uid)
        return demote

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, preexec_fn=self._as_user(), capture_output=True, text=True, check=True,
                              cwd="/")

    def start(self) -> "PostgresProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chown(self.workdir, self._pw.pw_uid, self._pw.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run([str(BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-E", "UTF8", "--no-instructions"])
        log = self.workdir / "postgres.log"
        log.touch()
        os.chown(log, self._pw.pw_uid, self._pw.pw_gid)
        self.proc = subprocess.Popen(
            [str(BIN / "postgres"), "-D", str(self.data), "-c", f"listen_addresses={LOOPBACK}",
             "-c", f"port={self.port}", "-c", f"unix_socket_directories={self.workdir}",
             "-c", f"fsync={'on' if self.durable else 'off'}", "-c", f"synchronous_commit={'on' if self.durable else 'off'}",
             "-c", "shared_buffers=256MB"],
            preexec_fn=self._as_user(), stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd="/")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}): {log.read_text()[-2000:]}")
            r = subprocess.run([str(BIN / "pg_isready"), "-h", LOOPBACK, "-p", str(self.port), "-U", self.user],
                               capture_output=True)
            if r.returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("postgres did not accept connections within 60 s")

    def create_database(self, name: str) -> None:
        self._run([str(BIN.parent / "bin" / "createdb"), "-h", LOOPBACK, "-p", str(self.port), "-U", self.user, name])

    def orthanc_index(self, database: str) -> dict:
        """Orthanc configuration keys for an index in ``database`` of this server."""
        return {"PostgreSQL": {"EnableIndex": True, "EnableStorage": False, "Host": LOOPBACK, "Port": self.port,
                               "Database": database, "Username": self.user, "Password": "", "Lock": False}}

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)            # PostgreSQL's "fast" shutdown
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "PostgresProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
