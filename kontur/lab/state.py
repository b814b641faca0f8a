"""The lab's state file and the API the rest of kontur uses to reach a lab.

``kontur lab up`` writes ``$KONTUR_LAB_DIR/state.json`` (default
/var/lib/kontur/lab) as it goes, so that ``kontur lab down`` can undo
everything even after a crash.  Other parts of kontur read it::

    from kontur.lab.state import load_state, lab_region, pyinfra_hosts
    state = load_state()                 # None when no lab is up
    region = lab_region(region, state)   # the same region at its lab addresses
    hosts = pyinfra_hosts(state)         # [(address, {ssh_user, ssh_key, ...}), ...]
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInput, KonturError, OperationFailed
from ..model import Region
from .config import BRIDGE_ADDRESS, NETWORK, state_file

STATE_VERSION = 1


@dataclass
class HostInfo:
    """One node's lab host: a container booted in its own network namespace."""
    address: str
    netns: str
    pid: int                # the systemd-nspawn process
    rootfs: str             # the merged (overlayfs) root the container runs on
    veth: str = ""          # bridge side of the host's link (``kontur lab cut`` takes it down)
    role: str = ""
    inventory_address: str = ""
    ssh_port: int = 22
    start_time: int = 0     # /proc/PID/stat start time: a PID is only ours if this matches
    console_log: str = ""


@dataclass
class ModalityInfo:
    """A modality of the inventory: a namespace holding its lab address."""
    address: str
    netns: str
    hospital: str = ""
    node: str = ""          # the node the inventory connects it to
    modality: str = ""
    inventory_address: str = ""


@dataclass
class MisInfo:
    """A hospital's MIS: an MLLP listener in its own namespace that records what it receives."""
    address: str
    port: int
    netns: str
    log: str                # JSON lines, one per HL7 message received
    pid: int = 0
    start_time: int = 0
    inventory_address: str = ""
    facility: str = ""      # MSH-4 the listener answers as (the inventory's ``mis.facility``)


@dataclass
class AptInfo:
    """The lab's signed package repository, served on the bridge."""
    url: str
    keyring: str            # public key on this machine; install on hosts as config.HOST_KEYRING
    source_line: str        # the full ``deb [signed-by=...] URL ./`` line for a host
    repo: str = ""          # the full repository (in the cache)
    fingerprint: str = ""   # of the lab's signing key
    served: str = ""        # symbolic link the HTTP server serves: the repository or a variant
    withheld: list[str] = field(default_factory=list)   # packages the served variant lacks


@dataclass
class LabState:
    region_name: str
    inventory: str
    address_map: dict[str, str]
    hosts: dict[str, HostInfo] = field(default_factory=dict)
    ssh_key: str = ""
    ssh_user: str = "root"
    known_hosts: str = ""
    apt: AptInfo | None = None
    modalities: dict[str, ModalityInfo] = field(default_factory=dict)
    mis: dict[str, MisInfo] = field(default_factory=dict)
    #: "starting" while ``lab up`` runs, "up" once every host answered
    status: str = "starting"
    lab_dir: str = ""
    bridge: str = ""
    bridge_address: str = ""
    created: str = ""
    #: random per ``lab up``: names what must be unique on the machine (cgroups)
    lab_id: str = ""
    #: everything ``up`` created, in order; ``down`` undoes it (internal)
    resources: list[dict[str, Any]] = field(default_factory=list)
    version: int = STATE_VERSION

    # --- (de)serialisation ---

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabState:
        data = dict(data)
        data["hosts"] = {k: HostInfo(**v) for k, v in data.get("hosts", {}).items()}
        data["modalities"] = {k: ModalityInfo(**v) for k, v in data.get("modalities", {}).items()}
        data["mis"] = {k: MisInfo(**v) for k, v in data.get("mis", {}).items()}
        data["apt"] = AptInfo(**data["apt"]) if data.get("apt") else None
        return cls(**data)

    # --- helpers ---

    def host(self, node: str) -> HostInfo:
        """The lab host of ``node``; InvalidInput-style error naming the nodes if unknown."""
        if node not in self.hosts:
            from ..errors import InvalidInput
            raise InvalidInput(
                f"{node!r} is not a node of the running lab (region {self.region_name}); "
                f"expected one of: {', '.join(self.hosts)}")
        return self.hosts[node]


def load_state(path: Path | None = None) -> LabState | None:
    """The running (or half-built, see ``status``) lab, or None when there is none."""
    path = path or state_file()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OperationFailed(f"cannot read the lab state {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"state version {data.get('version')!r}, expected {STATE_VERSION}")
        return LabState.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise OperationFailed(
            f"the lab state {path} cannot be read ({exc}); if no lab is running, remove the file") from None


def save_state(state: LabState, path: Path | None = None) -> None:
    """Write the state atomically (temporary file, fsync, rename)."""
    path = path or state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".state.", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state.to_dict(), f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def owner() -> dict[str, Any] | None:
    """The lab that owns this machine's lab network, as recorded by its ``up``
    ({"lab_dir", "region", "created"}), whatever KONTUR_LAB_DIR says; None when none."""
    from .config import OWNER_FILE
    try:
        data = json.loads(OWNER_FILE.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("lab_dir") else None


def elsewhere_hint() -> str | None:
    """When the lab running on this machine lives in another lab directory: how to reach it."""
    from .config import lab_dir
    o = owner()
    if o is None or Path(o["lab_dir"]) == lab_dir() or not (Path(o["lab_dir"]) / "state.json").exists():
        return None     # none, ours, or a stale record of a lab that is gone
    return (f"a lab of region {o.get('region')} is up from another lab directory: "
            f"use KONTUR_LAB_DIR={o['lab_dir']} kontur lab ...")


def require_state() -> LabState:
    """The running lab; a clear error when there is none or it is not fully up."""
    state = load_state()
    if state is None:
        from .config import lab_dir
        raise KonturError(f"no lab is running from {lab_dir()}",
                          hint=elsewhere_hint() or "start one with: kontur lab up [-i FILE]")
    if state.status != "up":
        raise KonturError(
            f"the lab of region {state.region_name} is not up (status: {state.status}); "
            "a `kontur lab up` is running or failed",
            hint="run `kontur lab down` to clean up, then `kontur lab up` again")
    return state


def lab_region(region: Region, state: LabState) -> Region:
    """The region as the lab runs it: every inventory address replaced by its
    lab address, the lab network as the secure network (and every hospital's
    network), and the bridge address -- where kontur connects from -- as the
    admin network."""
    return region.with_addresses(state.address_map, network=str(NETWORK),
                                 admin_networks=[f"{state.bridge_address or BRIDGE_ADDRESS}/32"])


def running_lab_region(region: Region) -> Region:
    """``region`` as the running lab has it (:func:`lab_region`); refused when
    the lab is of another region."""
    state = require_state()
    if state.region_name != region.region.name:
        raise InvalidInput(f"the running lab is of region {state.region_name!r}, the inventory is of region "
                           f"{region.region.name!r}; pass the lab's inventory: -i {state.inventory}")
    return lab_region(region, state)


def ssh_options(state: LabState, port: int = 22) -> list[str]:
    """ssh(1) options that reach a lab host with the lab's key and known_hosts only."""
    return [
        "-i", state.ssh_key,
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={state.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=5",
        "-o", "LogLevel=ERROR",
        "-p", str(port),
    ]


def ssh_command(state: LabState, node: str, *command: str) -> list[str]:
    """The argument list of ``ssh`` running ``command`` on ``node``'s lab host (a login shell if none)."""
    host = state.host(node)
    return ["ssh", *ssh_options(state, host.ssh_port), f"{state.ssh_user}@{host.address}", *command]


def pyinfra_hosts(state: LabState) -> list[tuple[str, dict[str, Any]]]:
    """pyinfra inventory entries for every lab host: ``(lab address, host data)``.

    The data carries the node name as ``kontur_node`` so deploys can look the
    node up in the region.
    """
    return [
        (h.address, {
            "kontur_node": node,
            "ssh_user": state.ssh_user,
            "ssh_port": h.ssh_port,
            "ssh_key": state.ssh_key,
            "ssh_known_hosts_file": state.known_hosts,
            "ssh_strict_host_key_checking": "yes",
        })
        for node, h in state.hosts.items()
    ]
