"""Lab hosts: a copy-on-write root filesystem per node (overlayfs over the
cached base), its identity (host name, /etc/hosts, machine id, sshd host
keys, the lab's SSH key for root), booting it with systemd-nspawn in the
node's network namespace, and telling when it is ready."""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
import uuid
from pathlib import Path

from ..errors import OperationFailed
from .proc import Started, alive, run, spawn, tail

log = logging.getLogger("kontur.lab")


def mount_overlay(base: Path, hostdir: Path) -> Path:
    """Mount ``hostdir/root``: the base read-only below, ``hostdir/upper`` on top."""
    upper, work, root = hostdir / "upper", hostdir / "work", hostdir / "root"
    for d in (upper, work, root):
        d.mkdir(parents=True, exist_ok=True)
    for p in (base, upper, work):
        if any(c in str(p) for c in ",:"):
            raise OperationFailed(f"{p}: overlayfs paths cannot contain ',' or ':'; choose another "
                                  "KONTUR_LAB_DIR / KONTUR_LAB_CACHE")
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={base},upperdir={upper},workdir={work}", str(root)],
        what=f"mounting the root filesystem of {hostdir.name}")
    return root


def hosts_file(node: str, addresses: dict[str, str]) -> str:
    """/etc/hosts: loopback, then every lab node by name at its lab address."""
    lines = ["# kontur lab: every node of the region at its lab address",
             "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback",
             "ff02::1\tip6-allnodes",
             "ff02::2\tip6-allrouters"]
    lines += [f"{addr}\t{name}" for name, addr in addresses.items()]
    return "\n".join(lines) + "\n"


def configure_root(root: Path, node: str, addresses: dict[str, str], authorized_key: str,
                   ssh_port: int) -> None:
    """Give the host its own identity; the base below stays untouched."""
    etc = root / "etc"
    (etc / "hostname").write_text(node + "\n")
    (etc / "hosts").write_text(hosts_file(node, addresses))
    (etc / "machine-id").write_text(uuid.uuid4().hex + "\n")
    ssh_dir = root / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssh_dir.chmod(0o700)
    keys = ssh_dir / "authorized_keys"
    keys.write_text(authorized_key.strip() + "\n")
    keys.chmod(0o600)
    conf_d = etc / "ssh" / "sshd_config.d"
    conf_d.mkdir(parents=True, exist_ok=True)
    (conf_d / "kontur-lab.conf").write_text(
        "# kontur lab: root logs in with the lab's key only\n"
        f"Port {ssh_port}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n")
    for key in (etc / "ssh").glob("ssh_host_*"):
        key.unlink()
    run(["ssh-keygen", "-A", "-f", str(root)], what=f"generating sshd host keys for {node}")


def known_hosts_line(root: Path, node: str, address: str, port: int) -> str:
    """A known_hosts line for the host's ed25519 key, under its lab address and name."""
    pub = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
    names = [address, node] if port == 22 else [f"[{address}]:{port}", f"[{node}]:{port}"]
    return f"{','.join(names)} {pub[0]} {pub[1]}"


def cgroup_hierarchies() -> list[tuple[Path, str]]:
    """(mount point, this process's path below it) of the hierarchies a container's
    systemd manages: cgroup2 (unified) and the legacy name=systemd one."""
    own: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers or "0"] = path
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        fstype, opts = rfields[0], rfields[-1].split(",")
        if fstype == "cgroup2":
            key = "0"
        elif fstype == "cgroup" and "name=systemd" in opts:
            key = "name=systemd"
        else:
            continue
        mount_root, mount_point, path = fields[3], fields[4], own.get(key)
        if path is None or not path.startswith(mount_root):
            continue
        rel = path[len(mount_root):].strip("/")
        found.append((Path(mount_point), rel))
    return found


def make_cgroups(lab_id: str, node: str) -> list[Path]:
    """A cgroup of its own for a container, in each hierarchy its systemd manages.

    Without it every container would run in the cgroup kontur runs in, and their
    systemds would manage (and clean up) one another's units.
    """
    made = []
    for mount_point, rel in cgroup_hierarchies():
        d = mount_point / rel / "kontur-lab" / lab_id / node
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("cannot create cgroup %s (%s); %s shares its parent's", d, exc.strerror, node)
            continue
        made.append(d)
    return made


def _pids_in(d: Path) -> list[int]:
    pids: list[int] = []
    for dirpath, _, files in os.walk(d):
        if "cgroup.procs" in files:
            try:
                pids += [int(x) for x in Path(dirpath, "cgroup.procs").read_text().split()]
            except (FileNotFoundError, ValueError):
                pass
    return pids


def empty_cgroup(d: Path, timeout: float = 10.0) -> None:
    """SIGKILL what is still in a container's cgroup and wait (up to ``timeout``) until it is gone.

    A container stopped while its systemd was still booting can leave processes
    (journald, say) dying in its cgroup after systemd-nspawn itself is gone; only
    what kontur's own container runs is in that cgroup."""
    deadline = time.monotonic() + timeout
    while (pids := _pids_in(d)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def remove_cgroup(d: Path) -> None:
    """Remove a container's cgroup and what its systemd made below it (its processes killed first)."""
    if not d.is_dir():
        return
    empty_cgroup(d)
    for dirpath, _, _ in sorted(os.walk(d), key=lambda t: -t[0].count("/")):
        try:
            os.rmdir(dirpath)
        except FileNotFoundError:
            pass
    for parent in (d.parent, d.parent.parent):
        if "kontur-lab" in (parent.name, parent.parent.name):
            try:
                parent.rmdir()
            except OSError:
                break     # another container's (or another lab's) cgroup is still there


def boot(node: str, root: Path, netns: str, console_log: Path, cgroups: list[Path] = (),
         pidfile: Path | None = None) -> Started:
    """Boot the container detached, in its own cgroups; its console goes to ``console_log``."""
    # CAP_NET_ADMIN: a node loads its own nftables firewall (in its own namespace;
    # the host's kontur_lab table still keeps the lab on the bridge)
    return spawn(["systemd-nspawn", "--quiet", "--boot", "--capability=CAP_NET_ADMIN", "-D", str(root), f"--machine={node}",
                  "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{netns}",
                  "--link-journal=no", "--resolv-conf=off", "--timezone=off"],
                 console_log, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"}, what=f"host {node}",
                 cgroups=cgroups, pidfile=pidfile)


def sshd_answers(address: str, port: int, timeout: float = 1.0) -> bool:
    """True when something at address:port greets like an SSH server."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def wait_for_sshd(hosts: dict[str, tuple[str, int, Started, Path]], timeout: float) -> None:
    """Wait until every host's sshd answers; fail early when a container stops."""
    pending = dict(hosts)
    deadline = time.monotonic() + timeout
    while pending:
        for node, (address, port, started, console) in list(pending.items()):
            if not alive(started.pid, started.start_time):
                raise OperationFailed(f"host {node} stopped while booting; its console:\n{tail(console)}")
            if sshd_answers(address, port, timeout=0.5):
                log.debug("%s: sshd answers on %s:%s", node, address, port)
                del pending[node]
        if pending and time.monotonic() > deadline:
            lines = [f"  {n}: console {c}\n{tail(c, 8)}" for n, (_, _, _, c) in pending.items()]
            raise OperationFailed(
                f"sshd did not answer within {timeout:.0f} s on: {', '.join(pending)}\n" + "\n".join(lines),
                hint="raise KONTUR_LAB_BOOT_TIMEOUT on a slow machine")
        if pending:
            time.sleep(0.2)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def container_leader(nspawn_pid: int) -> int | None:
    """The PID (as this machine sees it) of the container's init, below its systemd-nspawn."""
    todo, seen = [nspawn_pid], set()
    while todo:
        pid = todo.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        if pid != nspawn_pid:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if len(ids) >= 2 and ids[-1] == "1":
                            return pid
            except OSError:
                continue
        todo += _children(pid)
    return None


def systemd_state(nspawn_pid: int) -> str:
    """``systemctl is-system-running`` inside the container, through nsenter (works when cut)."""
    leader = container_leader(nspawn_pid)
    if leader is None:
        return "unknown"
    cp = run(["nsenter", "-t", str(leader), "-m", "-u", "-i", "-n", "-p",
              "systemctl", "is-system-running"], check=False, timeout=15)
    return (cp.stdout or "").strip() or f"unknown (exit {cp.returncode})"
