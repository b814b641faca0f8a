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
from ..files import atomic_write
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
from .plan import Endpoint, Plan, make_plan
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

    def spawn(self, label: str, start: Callable[[Path], Started], **tags: str) -> Started:
        """Start a process through ``start(pidfile)``, recorded before it exists:
        the pidfile names it even if kontur dies before noting its PID.  ``tags``
        (``node=``, ``mis=``) name what the process belongs to, so a lab that
        follows its inventory can remove it alone."""
        pidfile = Path(self.state.lab_dir) / "run" / (label.replace(" ", "-") + ".pid")
        entry: dict[str, Any] = {"kind": "process", "label": label, "pidfile": str(pidfile),
                                 "pid": 0, "start_time": 0, **tags}
        self.add(entry)
        started = start(pidfile)
        with self.lock:
            entry["pid"], entry["start_time"] = started.pid, started.start_time
            save_state(self.state)
        return started


def teardown(state: LabState, progress: Progress = _quiet,
             resources: list[dict[str, Any]] | None = None) -> list[str]:
    """Undo everything in ``state.resources`` (or only ``resources``, some of them);
    returns what could not be undone."""
    res = state.resources if resources is None else resources
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
                if existing.region_name != region.region.name:
                    raise LabRefused(
                        f"a lab of region {existing.region_name} is up (since {existing.created}); the inventory "
                        f"{inventory} is of region {region.region.name}; nothing was changed",
                        hint=f"pass that region's inventory to follow its edits (-i {existing.inventory}), "
                             "or run `kontur lab down` first")
                return _follow(existing, region, inventory, progress)
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
        _forget_secrets(progress, "an earlier lab's")
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


@dataclass
class Changes:
    """What a running lab did to follow its inventory."""
    hosts_added: list[str] = field(default_factory=list)
    hosts_removed: list[str] = field(default_factory=list)
    modalities_added: list[str] = field(default_factory=list)
    modalities_removed: list[str] = field(default_factory=list)
    mis_added: list[str] = field(default_factory=list)
    mis_removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return any(getattr(self, f) for f in self.__dataclass_fields__)

    def lines(self) -> list[str]:
        words = {"hosts": "host", "modalities": "device", "mis": "MIS listener"}
        out = []
        for f in self.__dataclass_fields__:
            what, verb = f.rsplit("_", 1)
            names = getattr(self, f)
            if names:
                out.append(f"{verb} {words[what]}{'s' if len(names) > 1 else ''}: {', '.join(names)}")
        return out


def _follow(state: LabState, region: Region, inventory: Path, progress: Progress) -> LabState:
    """Make the running lab match an edited inventory of its region: add the hosts, devices and
    MIS listeners it gained, remove those it lost, and leave every other host running as it is.

    What production would do when a hospital is rolled out: one new host, nothing else touched
    (the deploy that follows changes the TsAMI's peers).  A host whose inventory address or SSH
    port changed is refused: a lab host cannot move without losing its disk.
    """
    t0 = time.monotonic()
    untagged = [r for r in state.resources if r["kind"] in ("netns", "mount") and
                not (r.get("endpoint") or r.get("node"))]
    if untagged:
        raise LabRefused("this lab was brought up by an older kontur that does not record which host owns "
                         "what; it cannot follow the inventory", hint="kontur lab down && kontur lab up")
    plan = make_plan(region, keep=state.address_map)
    moved = []
    for node, h in state.hosts.items():
        if node in plan.nodes:
            ep = plan.nodes[node]
            if ep.inventory_address != h.inventory_address:
                moved.append(f"{node}: address {h.inventory_address} -> {ep.inventory_address}")
            elif region.ports(node).ssh != h.ssh_port:
                moved.append(f"{node}: SSH port {h.ssh_port} -> {region.ports(node).ssh}")
    if moved:
        raise LabRefused("a running lab cannot move a host (its disk would be lost): " + "; ".join(moved)
                         + "; nothing was changed",
                         hint="undo that edit, or rebuild the lab: kontur lab down && kontur lab up")

    have_netns = {r["endpoint"] for r in state.resources if r["kind"] == "netns"}
    want_netns = {ep.netns for ep in plan.endpoints}
    ch = Changes(hosts_added=[n for n in plan.nodes if n not in state.hosts],
                 hosts_removed=[n for n in state.hosts if n not in plan.nodes])
    new_modalities = _modalities(region, plan)
    ch.modalities_added = [a for a in new_modalities if a not in state.modalities]
    ch.modalities_removed = [a for a in state.modalities if a not in new_modalities]
    restart = [hk for hk, m in state.mis.items() if hk in plan.mis and
               (m.address, m.port, m.netns, m.facility) !=
               (plan.mis[hk][1].address, plan.mis[hk][0], plan.mis[hk][1].netns, _facility(region, hk))]
    ch.mis_removed = [hk for hk in state.mis if hk not in plan.mis or hk in restart]
    ch.mis_added = [hk for hk in plan.mis if hk not in state.mis or hk in restart]

    old_inventory, state.inventory = state.inventory, str(Path(inventory).resolve())
    if not ch and have_netns == want_netns and new_modalities == state.modalities:
        state.address_map = plan.address_map
        save_state(state)
        progress("lab up: the running lab already matches the inventory; nothing changed")
        return state

    # first what the inventory lost (freeing link names a new endpoint may reuse) ...
    gone = [r for r in state.resources if
            r.get("node") in ch.hosts_removed or r.get("mis") in ch.mis_removed or
            (r.get("endpoint") and r["endpoint"] not in want_netns)]
    if gone:
        progress("lab up: " + ("; ".join(ln for ln in ch.lines() if ln.startswith("removed"))
                               or "removing namespaces the inventory no longer has"))
        left = teardown(state, progress, gone)
        for node in ch.hosts_removed:
            try:
                fs.remove_tree(Path(state.hosts[node].rootfs).parent)
            except (KonturError, OSError) as exc:
                left.append(f"remove the disk of {node}: {getattr(exc, 'message', None) or exc}")
        if left:
            save_state(state)
            raise OperationFailed("the lab could not remove what the inventory lost: " + "; ".join(left),
                                  hint="fix the cause and run `kontur lab up` again, or `kontur lab down`")
        state.resources = [r for r in state.resources if r not in gone]
        for node in ch.hosts_removed:
            del state.hosts[node]
        for hk in ch.mis_removed:
            del state.mis[hk]
        _write_known_hosts(state)
        save_state(state)

    # ... then what it gained; a failure here removes only what this run made
    ledger = Ledger(state)
    mark = len(state.resources)
    before = (state.modalities, state.address_map)
    added_nodes = {n: plan.nodes[n] for n in ch.hosts_added}
    try:
        _make_endpoints(ledger, [ep for ep in plan.endpoints if ep.netns not in have_netns])
        roots: dict[str, Path] = {}
        if added_nodes:
            progress(f"lab up: adding host{'s' if len(added_nodes) > 1 else ''} {', '.join(added_nodes)}")
            roots = _prepare_roots(state, ledger, region, plan, added_nodes, ensure_base(progress))
        state.modalities = new_modalities
        state.address_map = plan.address_map
        _start_mis(state, ledger, region, {hk: plan.mis[hk] for hk in ch.mis_added})
        if added_nodes:
            _make_inotify_room(len(plan.nodes), ledger, progress)
            _boot(state, ledger, region, added_nodes, roots)
    except BaseException as exc:
        progress("lab up failed; removing what it had added (the rest of the lab keeps running)")
        made = state.resources[mark:]
        left = teardown(state, progress, made)
        for node in added_nodes:
            state.hosts.pop(node, None)
            if not left:
                fs.remove_tree(Path(state.lab_dir) / "hosts" / node)
        for hk in ch.mis_added:
            state.mis.pop(hk, None)
        state.modalities, state.address_map = before
        if not gone:        # nothing of the lab changed: it still runs its old inventory
            state.inventory = old_inventory
        if not left:
            del state.resources[mark:]
        save_state(state)
        msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        if left:
            raise OperationFailed(f"{msg}\nand removing what was added left: " + "; ".join(left),
                                  hint="run `kontur lab down` to clean up") from None
        if isinstance(exc, (KonturError, KeyboardInterrupt)):
            raise
        raise OperationFailed(f"lab up failed and its additions were removed: {type(exc).__name__}: {exc}") from exc
    # every host knows every node by name, as DNS would tell it
    addresses = {n: h.address for n, h in state.hosts.items()}
    for node, h in state.hosts.items():
        if node not in added_nodes:
            etc_hosts = Path(h.rootfs) / "etc" / "hosts"
            atomic_write(etc_hosts, hosts.hosts_file(node, addresses).encode(), mode=0o644)
    save_state(state)
    for ln in ch.lines():
        progress(f"lab up: {ln}")
    progress(f"lab up: followed the inventory in {time.monotonic() - t0:.1f} s; "
             f"{len(state.hosts) - len(added_nodes)} host(s) kept running untouched")
    return state


def _facility(region: Region, hk: str) -> str:
    mis = region.hospitals[hk].mis
    return mis.facility if mis and mis.facility else hk.upper()


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
    _make_endpoints(ledger, plan.endpoints)

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

    progress(f"hosts: preparing {len(plan.nodes)} root filesystems (overlayfs over {base})")
    roots = _prepare_roots(state, ledger, region, plan, plan.nodes, base)
    state.modalities = _modalities(region, plan)
    _start_mis(state, ledger, region, plan.mis)
    _make_inotify_room(len(plan.nodes), ledger, progress)
    progress(f"hosts: booting {len(plan.nodes)} containers")
    _boot(state, ledger, region, plan.nodes, roots)
    state.status = "up"
    save_state(state)


def _make_endpoints(ledger: Ledger, endpoints: list[Endpoint]) -> None:
    """A namespace and its link to the bridge per endpoint, each tagged with the namespace."""
    for ep in endpoints:
        net.create_netns(ep.netns)
        ledger.add({"kind": "netns", "name": ep.netns, "endpoint": ep.netns})
        net.setup_netns(ep.netns)
        net.create_link(ep)
        ledger.add({"kind": "link", "name": ep.veth, "endpoint": ep.netns})
        net.setup_link(ep)


def _prepare_roots(state: LabState, ledger: Ledger, region: Region, plan: Plan, nodes: dict[str, Endpoint],
                   base: Path) -> dict[str, Path]:
    """Root filesystems of ``nodes``, in parallel (ssh-keygen -A takes a moment each)."""
    node_addresses = {n: ep.address for n, ep in plan.nodes.items()}
    pubkey = Path(state.ssh_key + ".pub").read_text()
    hostdir = Path(state.lab_dir) / "hosts"

    def prepare(node: str) -> Path:
        root = hosts.mount_overlay(base, hostdir / node)
        ledger.add({"kind": "mount", "path": str(root), "node": node})
        hosts.configure_root(root, node, node_addresses, pubkey, region.ports(node).ssh)
        return root

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(nodes, pool.map(prepare, nodes)))


def _write_known_hosts(state: LabState) -> None:
    """The lab's known_hosts: every host's key under its lab address and name."""
    Path(state.known_hosts).write_text("".join(
        hosts.known_hosts_line(Path(h.rootfs), n, h.address, h.ssh_port) + "\n" for n, h in state.hosts.items()))


def _modalities(region: Region, plan: Plan) -> dict[str, ModalityInfo]:
    """The outside world's devices: one namespace (shared by a host's devices) each."""
    found = {}
    for aet, (hk, ep) in plan.modalities.items():
        m = next(m for m in region.hospitals[hk].modalities if m.aet == aet)
        found[aet] = ModalityInfo(address=ep.address, netns=ep.netns, hospital=hk,
                                  node=region.hospitals[hk].node or "", modality=m.modality,
                                  inventory_address=ep.inventory_address)
    return found


def _mis_argv(region: Region, hk: str, port: int, ep: Endpoint, logfile: Path) -> list[str]:
    return ["ip", "netns", "exec", ep.netns, sys.executable, "-m", "kontur.lab.mis",
            "--bind", ep.address, "--port", str(port), "--log", str(logfile),
            "--facility", _facility(region, hk)]


def _start_mis(state: LabState, ledger: Ledger, region: Region, mis: dict[str, tuple[int, Endpoint]]) -> None:
    """An MLLP listener per hospital's MIS, each recording what it receives."""
    d = Path(state.lab_dir)
    logs = d / "logs"
    for hk, (port, ep) in mis.items():
        logfile = d / "mis" / f"{hk}.jsonl"
        argv = _mis_argv(region, hk, port, ep, logfile)
        started = ledger.spawn(f"MIS listener {hk}", lambda pidfile, argv=argv, hk=hk: spawn(
            argv, logs / f"mis-{hk}.log", env=_python_env(), what=f"the MIS listener of {hk}", pidfile=pidfile),
            mis=hk)
        state.mis[hk] = MisInfo(address=ep.address, port=port, netns=ep.netns, log=str(logfile),
                                pid=started.pid, start_time=started.start_time,
                                inventory_address=ep.inventory_address, facility=_facility(region, hk))
    _wait_listening({hk: (m.address, m.port, m.pid, m.start_time, logs / f"mis-{hk}.log")
                     for hk, m in state.mis.items() if hk in mis})


def _boot(state: LabState, ledger: Ledger, region: Region, nodes: dict[str, Endpoint],
          roots: dict[str, Path]) -> None:
    """Boot ``nodes``' containers and wait until each answers SSH with the lab's key."""
    logs = Path(state.lab_dir) / "logs"
    booted = {}
    for node, ep in nodes.items():
        console = logs / f"{node}.console.log"
        cgroups = hosts.make_cgroups(state.lab_id, node)
        ledger.add(*({"kind": "cgroup", "path": str(d), "node": node} for d in cgroups))
        started = ledger.spawn(f"host {node}", lambda pidfile, node=node, ep=ep, console=console, cgroups=cgroups:
                               hosts.boot(node, roots[node], ep.netns, console, cgroups, pidfile), node=node)
        state.hosts[node] = HostInfo(address=ep.address, netns=ep.netns, pid=started.pid,
                                     rootfs=str(roots[node]), veth=ep.veth, role=region.nodes[node].role.value,
                                     inventory_address=ep.inventory_address, ssh_port=region.ports(node).ssh,
                                     start_time=started.start_time, console_log=str(console))
        booted[node] = (ep.address, region.ports(node).ssh, started, console)
    save_state(state)
    _write_known_hosts(state)
    hosts.wait_for_sshd(booted, BOOT_TIMEOUT)
    _check_logins(state, list(nodes))


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


def _check_logins(state: LabState, nodes: list[str] | None = None) -> None:
    """Log in once to every host (of ``nodes``) with the lab's key and known_hosts: what deploys will do."""
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
        failed = [(n, e) for n, e in pool.map(login, state.hosts if nodes is None else nodes) if e]
    if failed:
        raise OperationFailed("SSH login to lab hosts failed: " + "; ".join(f"{n}: {e}" for n, e in failed))


# --- down -------------------------------------------------------------------

def _forget_secrets(progress: Progress, whose: str) -> None:
    """The lab's secrets store (its CA, passwords, a CA change-over under way) belongs to its hosts: it
    goes with them.  A lab that crashed without ``down`` left its store behind; a new lab starts without
    it (else a half-done rotation of hosts long gone would refuse the next one)."""
    from ..secrets import default_dir
    d = default_dir("", lab=True)
    if d.exists():
        fs.remove_tree(d)
        progress(f"removed {whose} secrets store {d} (its hosts are gone)")


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
        _forget_secrets(progress, "the lab's")
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
                           "`kontur lab up`", hint=f"let the lab follow it: kontur lab up -i {state.inventory}")
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

