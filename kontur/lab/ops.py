"""What the ``kontur lab`` commands do: up, down, status, cut, heal, send,
mis-log.  The CLI (``kontur.lab.cli``) only parses arguments and prints.

``up`` records every resource in the state file as soon as it exists, so a
failure midway (or a crash of kontur itself) is undone by the same code that
``down`` runs: stop our processes by PID, unmount, remove directories, links,
namespaces, the nftables table and the bridge.  Only what the state records
is ever removed; a resource that already existed is refused up front.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, KonturError, OperationFailed
from ..inventory import InventoryError, load
from ..model import LEGACY_NOTE, Region
from . import fs, hosts, net
from .base import ensure_base
from .config import (
    BOOT_TIMEOUT,
    BRIDGE,
    BRIDGE_ADDRESS,
    NETWORK,
    NFT_TABLE,
    OWNER_FILE,
    REPO_PORT,
    STOP_TIMEOUT,
    lab_dir,
    state_file,
)
from .mis import read_log
from .plan import Plan, make_plan
from .proc import Started, alive, read_pidfile, run, spawn, stop
from .repo import Repo, build_variant, ensure_repo, serve, set_served
from .state import (
    AptInfo,
    HostInfo,
    LabState,
    MisInfo,
    ModalityInfo,
    elsewhere_hint,
    load_state,
    owner,
    require_state,
    save_state,
    ssh_options,
)

log = logging.getLogger("kontur.lab")
Progress = Callable[[str], None]

#: programs the lab runs, and the Debian package each comes from
TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ip": "iproute2",
    "nft": "nftables",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "gpg": "gnupg",
    "gpgconf": "gpgconf",
    "dpkg-scanpackages": "dpkg-dev",
    "nsenter": "util-linux",
    "apt-get": "apt",
}


class LabRefused(InvalidInput):
    """The lab command refused to start; nothing was changed (exit 2)."""


def _quiet(msg: str) -> None:
    log.info(msg)


# --- checks ---------------------------------------------------------------

def check_root() -> None:
    if os.geteuid() != 0:
        raise LabRefused(
            "the lab needs root: it creates network namespaces, a bridge, mounts and containers",
            hint="run it as root, e.g. sudo kontur lab up")


def check_tools(tools: dict[str, str] = TOOLS) -> None:
    missing = [(t, pkg) for t, pkg in tools.items() if shutil.which(t) is None]
    if missing:
        pkgs = sorted({pkg for _, pkg in missing})
        raise LabRefused(
            "missing programs: " + ", ".join(f"{t} (Debian package {pkg})" for t, pkg in missing),
            hint=f"install them: apt-get install {' '.join(pkgs)}")


#: the lab network is one per machine, whatever the lab directory: so is the lock
MACHINE_LOCK = Path("/run/lock/kontur-lab.lock")


@contextmanager
def lab_lock() -> Iterator[None]:
    """One ``kontur lab up``/``down`` at a time on this machine."""
    d = lab_dir()
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    MACHINE_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(MACHINE_LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LabRefused(f"another `kontur lab up` or `down` is running on this machine "
                             f"(lock {MACHINE_LOCK})", hint="wait for it to finish") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# --- the ledger -------------------------------------------------------------

class Ledger:
    """Records what ``up`` made in the state file, as it goes (thread-safe)."""

    def __init__(self, state: LabState):
        self.state = state
        self.lock = threading.Lock()

    def add(self, *entries: dict[str, Any]) -> None:
        with self.lock:
            self.state.resources.extend(entries)
            save_state(self.state)

    def spawn(self, label: str, start: Callable[[Path], Started]) -> Started:
        """Start a process through ``start(pidfile)``, recorded before it exists:
        the pidfile names it even if kontur dies before noting its PID."""
        pidfile = Path(self.state.lab_dir) / "run" / (label.replace(" ", "-") + ".pid")
        entry: dict[str, Any] = {"kind": "process", "label": label, "pidfile": str(pidfile),
                                 "pid": 0, "start_time": 0}
        self.add(entry)
        started = start(pidfile)
        with self.lock:
            entry["pid"], entry["start_time"] = started.pid, started.start_time
            save_state(self.state)
        return started


def teardown(state: LabState, progress: Progress = _quiet) -> list[str]:
    """Undo everything in ``state.resources``; returns what could not be undone."""
    res = state.resources
    problems: list[str] = []

    procs = []
    for r in res:
        if r["kind"] == "process":
            if not r.get("pid"):     # kontur stopped before it noted the PID: the pidfile has it
                r["pid"], r["start_time"] = read_pidfile(Path(r["pidfile"])) or (0, 0)
            if r["pid"]:
                procs.append((r["pid"], r.get("start_time", 0), r["label"]))
    running = [p for p in procs if alive(p[0], p[1])]
    if running:
        progress(f"stopping {len(running)} process(es): "
                 f"{', '.join(lbl for _, _, lbl in running)}")
    problems += [f"process {lbl} still runs" for lbl in stop(procs, STOP_TIMEOUT)]

    def attempt(what: str, fn, *args) -> None:
        try:
            fn(*args)
        except (KonturError, OSError) as exc:
            problems.append(f"{what}: {getattr(exc, 'message', None) or exc}")

    for r in reversed(res):
        if r["kind"] == "cgroup":
            attempt(f"remove cgroup {r['path']}", hosts.remove_cgroup, Path(r["path"]))
    for r in reversed(res):
        if r["kind"] == "mount":
            attempt(f"unmount {r['path']}", fs.umount, Path(r["path"]))
    for r in reversed(res):
        if r["kind"] == "dir":
            attempt(f"remove {r['path']}", fs.remove_tree, Path(r["path"]))
    for r in reversed(res):
        if r["kind"] == "link":
            attempt(f"remove link {r['name']}", net.delete_link, r["name"])
    for r in reversed(res):
        if r["kind"] == "netns":
            attempt(f"remove namespace {r['name']}", net.delete_netns, r["name"])
    if any(r["kind"] == "nft" for r in res):
        attempt(f"remove nftables table {NFT_TABLE}", net.delete_nft)
    for r in reversed(res):
        if r["kind"] == "sysctl":
            attempt(f"restore {r['path']}", Path(r["path"]).write_text, str(r["value"]))
    return problems


#: root's inotify instances a booted host takes (systemd, journald, logind, ...: 20 hosts
#: exhausted Debian's default of 128 and the 20th never reached its login prompt)
INOTIFY_PER_HOST = 10
INOTIFY_MACHINE = 48
INOTIFY_LIMIT = Path("/proc/sys/fs/inotify/max_user_instances")


def _make_inotify_room(n_hosts: int, ledger: "Ledger", progress: Progress) -> None:
    """Raise the machine's inotify instance limit for as long as the lab runs, if its hosts need
    more; ``lab down`` puts the old value back."""
    try:
        current = int(INOTIFY_LIMIT.read_text())
    except (OSError, ValueError):
        return
    need = INOTIFY_MACHINE + INOTIFY_PER_HOST * n_hosts
    if current >= need:
        return
    ledger.add({"kind": "sysctl", "path": str(INOTIFY_LIMIT), "value": current})
    INOTIFY_LIMIT.write_text(str(need))
    progress(f"hosts: fs.inotify.max_user_instances {current} -> {need} while the lab runs ({n_hosts} hosts)")


# --- up ---------------------------------------------------------------------

def up(region: Region, inventory: Path, progress: Progress = _quiet) -> LabState:
    """Bring a lab of ``region`` up; returns its state.  Rolls back on any failure."""
    plan = make_plan(region)
    check_root()
    check_tools()
    with lab_lock():
        existing = load_state()
        if existing is not None:
            if existing.status == "up":
                raise LabRefused(
                    f"a lab is already up (region {existing.region_name}, since {existing.created})",
                    hint="run `kontur lab down` first")
            raise LabRefused(
                f"a lab of region {existing.region_name} was left half-built by a `kontur lab up` that "
                f"failed or was interrupted (status {existing.status})",
                hint="run `kontur lab down` first to clean it up")
        problems = net.conflicts(plan)
        elsewhere = elsewhere_hint() if problems else None
        if elsewhere:
            raise LabRefused(f"the lab network {NETWORK} is in use by another lab; nothing was changed",
                             hint=elsewhere + " (e.g. down to bring it down)")
        if problems:
            raise LabRefused(
                f"the lab network {NETWORK} is in use on this machine, and no lab state "
                f"({state_file()}) says it is ours: " + "; ".join(problems) + ". Nothing was changed",
                hint="stop whatever uses it; a lab whose state file was lost is removed with "
                     f"`ip link del {BRIDGE}` and `ip netns delete NAME` for its kl-* namespaces")
        t0 = time.monotonic()
        base = ensure_base(progress)
        repo = ensure_repo(progress)
        d = lab_dir()
        state = LabState(region_name=region.region.name, inventory=str(Path(inventory).resolve()),
                         address_map=plan.address_map, status="starting", lab_dir=str(d), bridge=BRIDGE,
                         bridge_address=BRIDGE_ADDRESS, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         lab_id=uuid.uuid4().hex[:8])
        ledger = Ledger(state)
        save_state(state)
        _write_owner(state)
        try:
            _build(state, ledger, region, plan, base, repo, progress)
        except BaseException as exc:
            progress("lab up failed; removing what it had built")
            left = teardown(state)
            if left:
                state.status = "failed"
                save_state(state)
                msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                raise OperationFailed(
                    f"{msg}\nand the rollback left: " + "; ".join(left),
                    hint="run `kontur lab down` to retry the clean-up") from None
            state_file().unlink(missing_ok=True)
            _clear_owner(state)
            if isinstance(exc, (KonturError, KeyboardInterrupt)):
                raise
            raise OperationFailed(f"lab up failed and was rolled back: {type(exc).__name__}: {exc}") from exc
        progress(f"lab up: {len(state.hosts)} hosts in {time.monotonic() - t0:.1f} s")
        return state


def _write_owner(state: LabState) -> None:
    OWNER_FILE.write_text(json.dumps({"lab_dir": state.lab_dir, "region": state.region_name,
                                      "created": state.created}) + "\n")


def _clear_owner(state: LabState) -> None:
    """Forget the record if it is this lab's (never another's)."""
    o = owner()
    if o is not None and o["lab_dir"] == state.lab_dir:
        OWNER_FILE.unlink(missing_ok=True)


def _python_env() -> dict[str, str]:
    """Environment for kontur's own helper programs (the MIS listener)."""
    pkg_root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": pkg_root + (os.pathsep + path if path else "")}


def _build(state: LabState, ledger: Ledger, region: Region, plan: Plan, base: Path, repo, progress) -> None:
    d = Path(state.lab_dir)
    dirs = {name: d / name for name in ("ssh", "logs", "mis", "hosts", "run", "mirror")}
    ledger.add(*({"kind": "dir", "path": str(p)} for p in dirs.values()))
    for p in dirs.values():
        fs.remove_tree(p)
        p.mkdir(mode=0o700)
    logs = dirs["logs"]

    # Named, machine-wide resources are recorded right *after* they were made:
    # one that already existed (someone else's) must never be removed by a rollback.
    progress(f"network: bridge {BRIDGE} ({BRIDGE_ADDRESS}), {len(plan.endpoints)} namespaces")
    net.create_bridge()
    ledger.add({"kind": "link", "name": BRIDGE})
    net.setup_bridge()
    net.create_nft(REPO_PORT)
    ledger.add({"kind": "nft", "table": NFT_TABLE})
    for ep in plan.endpoints:
        net.create_netns(ep.netns)
        ledger.add({"kind": "netns", "name": ep.netns})
        net.setup_netns(ep.netns)
        net.create_link(ep)
        ledger.add({"kind": "link", "name": ep.veth})
        net.setup_link(ep)

    key = dirs["ssh"] / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"kontur-lab-{region.region.name}",
         "-f", str(key)], what="generating the lab's SSH key")
    state.ssh_key, state.ssh_user = str(key), "root"
    state.known_hosts = str(dirs["ssh"] / "known_hosts")

    served = dirs["mirror"] / "served"
    ledger.spawn("repository HTTP server",
                 lambda pidfile: serve(repo, REPO_PORT, logs / "repo-http.log", pidfile, served=served))
    state.apt = AptInfo(url=repo.url(REPO_PORT), keyring=str(repo.keyring),
                        source_line=repo.source_line(REPO_PORT), repo=str(repo.path),
                        fingerprint=repo.fingerprint, served=str(served))

    # host root filesystems, in parallel (ssh-keygen -A takes a moment each)
    node_addresses = {n: ep.address for n, ep in plan.nodes.items()}
    pubkey = Path(str(key) + ".pub").read_text()
    hostdirs = {n: dirs["hosts"] / n for n in plan.nodes}
    progress(f"hosts: preparing {len(plan.nodes)} root filesystems (overlayfs over {base})")

    def prepare(node: str) -> Path:
        root = hosts.mount_overlay(base, hostdirs[node])
        ledger.add({"kind": "mount", "path": str(root)})
        hosts.configure_root(root, node, node_addresses, pubkey, region.ports(node).ssh)
        return root

    with ThreadPoolExecutor(max_workers=8) as pool:
        roots = dict(zip(plan.nodes, pool.map(prepare, plan.nodes)))
    Path(state.known_hosts).write_text("".join(
        hosts.known_hosts_line(roots[n], n, ep.address, region.ports(n).ssh) + "\n"
        for n, ep in plan.nodes.items()))

    # the outside world: modalities are namespaces; each MIS is a listener
    for aet, (hk, ep) in plan.modalities.items():
        m = next(m for m in region.hospitals[hk].modalities if m.aet == aet)
        state.modalities[aet] = ModalityInfo(address=ep.address, netns=ep.netns, hospital=hk,
                                             node=region.hospitals[hk].node or "", modality=m.modality,
                                             inventory_address=ep.inventory_address)
    for hk, (port, ep) in plan.mis.items():
        mis = region.hospitals[hk].mis
        logfile = dirs["mis"] / f"{hk}.jsonl"
        argv = ["ip", "netns", "exec", ep.netns, sys.executable, "-m", "kontur.lab.mis",
                "--bind", ep.address, "--port", str(port), "--log", str(logfile),
                "--facility", (mis.facility if mis and mis.facility else hk.upper())]
        started = ledger.spawn(f"MIS listener {hk}", lambda pidfile, argv=argv, hk=hk: spawn(
            argv, logs / f"mis-{hk}.log", env=_python_env(), what=f"the MIS listener of {hk}", pidfile=pidfile))
        state.mis[hk] = MisInfo(address=ep.address, port=port, netns=ep.netns, log=str(logfile),
                                pid=started.pid, start_time=started.start_time,
                                inventory_address=ep.inventory_address)
    _wait_listening({hk: (m.address, m.port, m.pid, m.start_time, logs / f"mis-{hk}.log")
                     for hk, m in state.mis.items()})

    _make_inotify_room(len(plan.nodes), ledger, progress)
    progress(f"hosts: booting {len(plan.nodes)} containers")
    booted = {}
    for node, ep in plan.nodes.items():
        console = logs / f"{node}.console.log"
        cgroups = hosts.make_cgroups(state.lab_id, node)
        ledger.add(*({"kind": "cgroup", "path": str(d)} for d in cgroups))
        started = ledger.spawn(f"host {node}", lambda pidfile, node=node, ep=ep, console=console, cgroups=cgroups:
                               hosts.boot(node, roots[node], ep.netns, console, cgroups, pidfile))
        state.hosts[node] = HostInfo(address=ep.address, netns=ep.netns, pid=started.pid,
                                     rootfs=str(roots[node]), veth=ep.veth, role=region.nodes[node].role.value,
                                     inventory_address=ep.inventory_address, ssh_port=region.ports(node).ssh,
                                     start_time=started.start_time, console_log=str(console))
        booted[node] = (ep.address, region.ports(node).ssh, started, console)
    save_state(state)
    hosts.wait_for_sshd(booted, BOOT_TIMEOUT)
    _check_logins(state)
    state.status = "up"
    save_state(state)


def _wait_listening(listeners: dict[str, tuple[str, int, int, int, Path]], timeout: float = 15) -> None:
    import socket

    from .proc import tail
    deadline = time.monotonic() + timeout
    pending = dict(listeners)
    while pending:
        for name, (addr, port, pid, st, logfile) in list(pending.items()):
            try:
                with socket.create_connection((addr, port), timeout=0.5):
                    del pending[name]
                    continue
            except OSError:
                pass
            if not alive(pid, st):
                raise OperationFailed(f"the MIS listener of {name} stopped:\n{tail(logfile)}")
        if pending and time.monotonic() > deadline:
            raise OperationFailed(f"MIS listeners not answering after {timeout:.0f} s: {', '.join(pending)}")
        if pending:
            time.sleep(0.1)


def _check_logins(state: LabState) -> None:
    """Log in once to every host with the lab's key and known_hosts: what deploys will do."""
    def login(node: str) -> tuple[str, str | None]:
        h = state.hosts[node]
        cp = run(["ssh", *ssh_options(state, h.ssh_port), f"{state.ssh_user}@{h.address}", "hostname"],
                 check=False, timeout=60)
        got = (cp.stdout or "").strip()
        if cp.returncode != 0:
            return node, (cp.stderr or "").strip() or f"exit {cp.returncode}"
        if got != node:
            return node, f"answered as {got!r}"
        return node, None

    with ThreadPoolExecutor(max_workers=8) as pool:
        failed = [(n, e) for n, e in pool.map(login, state.hosts) if e]
    if failed:
        raise OperationFailed("SSH login to lab hosts failed: " + "; ".join(f"{n}: {e}" for n, e in failed))


# --- down -------------------------------------------------------------------

def down(progress: Progress = _quiet) -> bool:
    """Stop and remove the lab.  False when there was none (a no-op)."""
    check_root()
    with lab_lock():
        state = load_state()
        if state is None:
            leftovers = []
            if net.link_exists(BRIDGE):
                leftovers.append(f"interface {BRIDGE}")
            leftovers += [f"namespace {n}" for n in net.list_netns() if n.startswith("kl-")]
            elsewhere = elsewhere_hint() if leftovers else None
            if elsewhere:
                raise OperationFailed(f"no lab is running from {lab_dir()}", hint=elsewhere)
            if leftovers:
                raise OperationFailed(
                    f"no lab state ({state_file()}), but these look like a lab's: {', '.join(leftovers)}; "
                    "kontur only removes what its state file records",
                    hint=f"remove them by hand: ip link del {BRIDGE}; ip netns delete NAME")
            return False
        t0 = time.monotonic()
        problems = teardown(state, progress)
        if problems:
            state.status = "failed"
            save_state(state)
            raise OperationFailed("the lab is only partly down: " + "; ".join(problems),
                                  hint="fix the cause and run `kontur lab down` again")
        state_file().unlink(missing_ok=True)
        _clear_owner(state)
        progress(f"lab down: region {state.region_name} removed in {time.monotonic() - t0:.1f} s")
        return True


# --- status, cut, heal --------------------------------------------------------

@dataclass
class HostStatus:
    node: str
    role: str
    address: str
    inventory_address: str
    link: str           # "up", "cut" or "missing"
    running: bool
    systemd: str


@dataclass
class Status:
    region: str
    status: str
    hosts: list[HostStatus] = field(default_factory=list)
    modalities: list[dict[str, Any]] = field(default_factory=list)
    mis: list[dict[str, Any]] = field(default_factory=list)
    #: packages the lab repository withholds (``kontur lab mirror``)
    withheld: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Everything the lab started is running (a cut link is intended, not a fault)."""
        return (self.status == "up" and all(h.running for h in self.hosts)
                and all(m["running"] for m in self.mis))


def _link_word(veth: str) -> str:
    s = net.link_up(veth)
    return "missing" if s is None else ("up" if s else "cut")


def status() -> Status:
    check_root()
    state = load_state()
    if state is None:
        raise KonturError(f"no lab is running from {lab_dir()}",
                          hint=elsewhere_hint() or "start one with: kontur lab up [-i FILE]")

    def one(node: str) -> HostStatus:
        h = state.hosts[node]
        running = alive(h.pid, h.start_time)
        return HostStatus(node, h.role, h.address, h.inventory_address, _link_word(h.veth), running,
                          hosts.systemd_state(h.pid) if running else "-")

    with ThreadPoolExecutor(max_workers=8) as pool:
        host_rows = list(pool.map(one, state.hosts))
    st = Status(state.region_name, state.status, host_rows, withheld=list(state.apt.withheld) if state.apt else [])
    for aet, m in state.modalities.items():
        st.modalities.append({"aet": aet, "hospital": m.hospital, "modality": m.modality, "address": m.address,
                              "inventory_address": m.inventory_address, "netns": m.netns,
                              "present": net.netns_exists(m.netns), "node": m.node})
    for hk, m in state.mis.items():
        st.mis.append({"hospital": hk, "address": m.address, "port": m.port,
                       "inventory_address": m.inventory_address, "netns": m.netns,
                       "running": alive(m.pid, m.start_time), "messages": len(read_log(Path(m.log)))})
    return st


def set_link(node: str, up: bool) -> HostInfo:
    """Cut (``up=False``) or heal a node's link to the bridge: a network partition."""
    check_root()
    state = require_state()
    h = state.host(node)
    net.set_link(h.veth, up)
    return h


def set_mirror(withheld: list[str]) -> list[str]:
    """Serve the lab repository without the ``withheld`` packages (a regional
    mirror that lacks them), or whole again with an empty list.  Hosts see
    the change at their next ``apt-get update``.  Returns what is withheld now."""
    check_root()
    with lab_lock():
        state = require_state()
        apt = state.apt
        if apt is None or not apt.served or not apt.repo:
            raise OperationFailed("this lab serves its repository without a variant link "
                                  "(it was brought up by an older kontur)",
                                  hint="kontur lab down && kontur lab up")
        served = Path(apt.served)
        wanted = sorted(set(withheld))
        # always a freshly signed index, also to restore the whole repository: a host
        # that fetched the variant must see a newer index (If-Modified-Since), as it
        # would when a real mirror is updated
        repo = Repo(Path(apt.repo), Path(apt.keyring), apt.fingerprint)
        target = build_variant(repo, wanted, served.parent / f"variant-{time.time_ns()}")
        set_served(served, target)
        for old in served.parent.glob("variant-*"):
            if old != target:
                fs.remove_tree(old)
        apt.withheld = wanted
        save_state(state)
        return wanted


def reboot(node: str, progress: Progress = _quiet) -> HostInfo:
    """Reboot a node's host: a clean power-off, then a boot of the same host.

    A container that reboots itself (``systemctl reboot`` inside) only stops:
    nothing here restarts a systemd-nspawn that exits.  So the lab does it:
    SIGTERM to the host's systemd-nspawn makes the container's systemd shut
    every service down in order (SIGKILL after STOP_TIMEOUT: a power cut),
    then the host boots again on the same root filesystem (its disk), in
    the same namespace and fresh cgroups, and is ready when sshd answers.
    """
    check_root()
    with lab_lock():
        state = require_state()
        h = state.host(node)
        label = f"host {node}"
        entry = next((r for r in state.resources if r["kind"] == "process" and r["label"] == label), None)
        if entry is None:
            raise OperationFailed(f"the lab state records no process for {label}",
                                  hint="bring the lab down and up again")
        progress(f"{node}: powering off")
        left = stop([(h.pid, h.start_time, label)], STOP_TIMEOUT)
        if left:
            raise OperationFailed(f"{label} did not stop; it is left as it was")
        # the old systemd's cgroups may hold its sub-groups (and controllers): start clean
        for r in state.resources:
            if r["kind"] == "cgroup" and Path(r["path"]).name == node:
                try:
                    hosts.remove_cgroup(Path(r["path"]))
                except OSError as exc:
                    log.warning("cannot remove cgroup %s before the reboot of %s: %s", r["path"], node, exc)
        cgroups = hosts.make_cgroups(state.lab_id, node)
        progress(f"{node}: booting")
        console = Path(h.console_log)
        started = hosts.boot(node, Path(h.rootfs), h.netns, console, cgroups, Path(entry["pidfile"]))
        entry["pid"], entry["start_time"] = started.pid, started.start_time
        h.pid, h.start_time = started.pid, started.start_time
        save_state(state)
        hosts.wait_for_sshd({node: (h.address, h.ssh_port, started, console)}, BOOT_TIMEOUT)
        progress(f"{node}: up again")
        return h


# --- the outside world ----------------------------------------------------------

def _state_region(state: LabState) -> Region:
    try:
        return load(Path(state.inventory))
    except (InventoryError, OSError) as exc:
        raise OperationFailed(f"the lab's inventory {state.inventory} cannot be read any more: {exc}",
                              hint="restore it, or bring the lab down and up again") from None


@dataclass
class SendResult:
    aet: str
    node: str
    target: str
    files: int
    stored: int
    ok: bool
    stderr: str


def send(ident: str, paths: list[Path]) -> SendResult:
    """Send DICOM files or folders with DCMTK storescu as modality ``ident`` (AE title or name)."""
    check_root()
    check_tools({"storescu": "dcmtk"})
    state = require_state()
    region = _state_region(state)
    found = region.find_modality(ident)
    if found is None:
        known = ", ".join(m.aet for h in region.hospitals.values() for m in h.modalities)
        raise InvalidInput(f"no modality {ident!r} in the inventory; expected an AE title or name: {known}")
    hk, _, m = found
    hospital = region.hospitals[hk]
    if m.aet not in state.modalities:
        raise InvalidInput(f"modality {m.aet} is not in the running lab; the inventory changed after "
                           "`kontur lab up`", hint="bring the lab down and up again")
    if m.legacy_folder:
        raise InvalidInput(f"modality {m.aet} cannot be sent from: it is {LEGACY_NOTE}")
    if not hospital.node or hospital.node not in state.hosts:
        raise InvalidInput(f"hospital {hk} of modality {m.aet} has no node to send to")
    node = hospital.node
    node_aet = region.nodes[node].aet
    if not node_aet:
        raise InvalidInput(f"node {node} has no AE title in the inventory; modality {m.aet} cannot address it")
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InvalidInput(f"no such file or folder: {', '.join(missing)}")
    files = sum(1 for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    if files == 0:
        raise InvalidInput(f"no files to send in: {', '.join(map(str, paths))}")
    mod = state.modalities[m.aet]
    target = state.hosts[node]
    port = region.ports(node).dicom
    argv = ["ip", "netns", "exec", mod.netns, "storescu", "-v", "-aet", m.aet, "-aec", node_aet,
            "-to", "10", "-ta", "30", "-td", "120"]
    if any(p.is_dir() for p in paths):
        argv += ["+sd", "+r"]
    argv += [target.address, str(port), *map(str, paths)]
    cp = run(argv, check=False, timeout=3600, env={**os.environ, "TCP_NODELAY": "1"})
    out = (cp.stdout or "") + (cp.stderr or "")
    stored = out.count("Received Store Response (Success)")
    return SendResult(m.aet, node, f"{node_aet}@{target.address}:{port}", files, stored,
                      cp.returncode == 0, out)


def mis_messages(hospital: str) -> tuple[MisInfo, list[dict[str, Any]]]:
    """Everything the MIS of ``hospital`` received, oldest first."""
    state = require_state()
    if hospital not in state.mis:
        try:
            region = _state_region(state)
            known = region.hospitals
        except KonturError:
            known = {}
        with_mis = ", ".join(state.mis) or "none"
        if hospital in known:
            raise InvalidInput(f"hospital {hospital} has no MIS in the inventory (no `mis:` entry); "
                               f"hospitals with an MIS: {with_mis}")
        raise InvalidInput(f"no hospital {hospital!r} in the lab's region; hospitals with an MIS: {with_mis}")
    info = state.mis[hospital]
    return info, read_log(Path(info.log))

