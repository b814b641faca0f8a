"""Running commands, starting long-lived processes detached, and stopping
them again -- only ever by the PID the lab recorded, never by name.

A PID is only taken to be ours while its start time (/proc/PID/stat field 22)
is the one recorded when the lab started it, so a reused PID is never
signalled.
"""
from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import OperationFailed

log = logging.getLogger("kontur.lab")


def run(argv: list[str], *, check: bool = True, input: str | bytes | None = None,
        timeout: float | None = 300, env: dict[str, str] | None = None,
        what: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (argument list, never a shell), capture its output.

    With ``check``, a non-zero exit raises OperationFailed naming ``what`` was
    being done and the end of the command's stderr.
    """
    log.debug("run: %s", shlex.join(argv))
    text = not isinstance(input, bytes)
    try:
        cp = subprocess.run(argv, input=input, capture_output=True, text=text, timeout=timeout,
                            env=env, check=False)
    except FileNotFoundError:
        raise OperationFailed(f"{what or 'running ' + argv[0]}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{what or shlex.join(argv)}: no answer within {timeout:.0f} s") from None
    if cp.returncode != 0:
        log.debug("exit %s: %s", cp.returncode, (cp.stderr or "").strip()[-2000:])
        if check:
            stderr = cp.stderr if isinstance(cp.stderr, str) else cp.stderr.decode(errors="replace")
            tail = "\n".join(stderr.strip().splitlines()[-15:])
            raise OperationFailed(
                f"{what or shlex.join(argv)} failed (exit {cp.returncode})" + (f":\n{tail}" if tail else ""))
    return cp


# The trampoline runs in a new session, forks the real process and exits, so
# the real process is adopted by PID 1 instead of staying a child of whoever
# called kontur (a test run, a script).  A close-on-exec pipe tells whether
# exec succeeded.
_TRAMPOLINE = r"""
import os, sys
logpath, pidfile, cgroups, argv = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    fd = os.open(logpath, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    nul = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nul, 0); os.dup2(fd, 1); os.dup2(fd, 2)
    for cg in filter(None, cgroups.split("\n")):
        try:
            with open(os.path.join(cg, "cgroup.procs"), "w") as f:
                f.write("0")
        except OSError as exc:
            print(f"kontur lab: cannot move into cgroup {cg}: {exc.strerror}", flush=True)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(w, f"{argv[0]}: {exc.strerror}".encode())
    os._exit(127)
os.close(w)
if pidfile:
    # written by this separate process, so it lands even if kontur is killed now
    with open(f"/proc/{pid}/stat") as f:
        start = f.read().rsplit(")", 1)[1].split()[19]
    with open(pidfile + ".tmp", "w") as f:
        f.write(f"{pid} {start}\n")
    os.replace(pidfile + ".tmp", pidfile)
err = os.read(r, 4096)
if err:
    sys.stdout.write("ERR " + err.decode(errors="replace"))
    sys.exit(1)
sys.stdout.write(str(pid))
"""


@dataclass
class Started:
    pid: int
    start_time: int


def spawn(argv: list[str], logfile: Path, *, env: dict[str, str] | None = None,
          what: str = "", cgroups: list[Path] = (), pidfile: Path | None = None) -> Started:
    """Start ``argv`` detached (own session, adopted by PID 1), output to ``logfile``,
    in ``cgroups`` (directories of cgroup hierarchies) if given.  With ``pidfile``,
    "PID START_TIME" is written there as soon as the process exists."""
    log.debug("spawn: %s > %s", shlex.join(argv), logfile)
    cp = subprocess.run([sys.executable, "-c", _TRAMPOLINE, str(logfile), str(pidfile or ""),
                         "\n".join(map(str, cgroups)), *argv],
                        capture_output=True, text=True, env=env, start_new_session=True,
                        timeout=30, check=False)
    if cp.returncode != 0 or not cp.stdout.strip().isdigit():
        msg = cp.stdout.removeprefix("ERR ").strip() or cp.stderr.strip()
        raise OperationFailed(f"cannot start {what or argv[0]}: {msg}")
    pid = int(cp.stdout.strip())
    st = start_time(pid)
    if st is None:
        tail = _tail(logfile)
        raise OperationFailed(f"{what or argv[0]} exited at once" + (f":\n{tail}" if tail else ""))
    return Started(pid, st)


def read_pidfile(path: Path) -> tuple[int, int] | None:
    """(pid, start time) from a pidfile ``spawn`` wrote, None if there is none."""
    try:
        pid, start = Path(path).read_text().split()
        return int(pid), int(start)
    except (OSError, ValueError):
        return None


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name is in parentheses and may contain spaces
    return raw[raw.rindex(")") + 2:].split()


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, None if there is no such process."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def alive(pid: int, start: int) -> bool:
    """True while ``pid`` is the process started at ``start`` and has not exited."""
    if pid <= 0:
        return False
    fields = _stat(pid)
    if not fields or fields[0] == "Z":
        return False
    return start == 0 or int(fields[19]) == start


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop(procs: list[tuple[int, int, str]], timeout: float) -> list[str]:
    """SIGTERM every live process of ``procs`` (pid, start_time, label), wait up
    to ``timeout`` seconds, SIGKILL what is left.  Returns labels still alive."""
    live = [(p, s, lbl) for p, s, lbl in procs if alive(p, s)]
    for pid, _, label in live:
        log.debug("SIGTERM %s (%s)", pid, label)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    live = _wait_gone(live, timeout)
    for pid, _, label in live:
        log.debug("SIGKILL %s (%s): still running after %.0f s", pid, label, timeout)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    live = _wait_gone(live, 10)
    _wait_reaped(procs, 5)
    return [label for _, _, label in live]


def _wait_reaped(procs: list[tuple[int, int, str]], timeout: float) -> None:
    """Give the parent (PID 1 for detached processes) a moment to reap the dead,
    so that no zombie of the lab lingers in the process table."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any((f := _stat(p)) and f[0] == "Z" and (s == 0 or int(f[19]) == s) for p, s, _ in procs):
            return
        for pid, _, _ in procs:
            _reap(pid)
        time.sleep(0.1)


def _wait_gone(live: list[tuple[int, int, str]], timeout: float) -> list[tuple[int, int, str]]:
    deadline = time.monotonic() + timeout
    while live:
        for pid, _, _ in live:
            _reap(pid)
        live = [x for x in live if alive(x[0], x[1])]
        if not live or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return live


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


tail = _tail
