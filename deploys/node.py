# SPDX-License-Identifier: AGPL-3.0-or-later
"""What a deploy knows about the host it runs on: the node's rendered bundle.

Every component deploy (``deploys/<component>/``) reads the node's
:class:`~kontur.render.Bundle` through :func:`context`; the bundle is the
single source of what goes on a host -- deploys add no configuration of their
own.  The context also records, per host, which operations uploaded which
files (so that a restart or reload follows only a change to a file that names
that unit) and a readable step name for every operation (so that a failure
names host, step and cause).

Host data read here (set by ``inventory/region.py``): ``kontur_node``,
``kontur_inventory``, ``kontur_lab``, ``kontur_secrets``.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.api import DeployError

from kontur.inventory import load
from kontur.render import render_node
from kontur.render.bundle import Bundle, RenderedFile
from kontur.render.system import POSTGRESQL_CLUSTER_UNIT
from kontur.secrets import SecretStore

if TYPE_CHECKING:
    from pyinfra.api.operation import OperationMeta

    from kontur.model import Region

#: the lab's repository key on a host (see kontur.lab.config.HOST_KEYRING)
LAB_KEYRING = "/etc/apt/keyrings/kontur-lab.gpg"
LAB_SOURCE = "/etc/apt/sources.list.d/kontur-lab.list"


@dataclass
class Step:
    """One operation on one host, as the report shows it."""
    name: str
    meta: "OperationMeta"
    file: RenderedFile | None = None
    #: runs only if one of these changes (restarts, reloads, daemon-reload)
    gates: list["OperationMeta"] | None = None


@dataclass
class AptPlan:
    """Where packages come from: files to write and sources to remove."""
    files: list[RenderedFile]
    owned: dict[str, str]


@dataclass
class NodeContext:
    node: str
    region: "Region"
    bundle: Bundle
    lab: bool
    apt: AptPlan
    store: SecretStore
    #: unit -> operations whose change restarts / reloads it
    restarts: dict[str, list["OperationMeta"]] = field(default_factory=dict)
    reloads: dict[str, list["OperationMeta"]] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)
    #: packages of the bundle missing at prepare time: facts read before the
    #: install do not show what the packages will put on the host
    installing: list[str] = field(default_factory=list)
    #: bundle paths as the host had them before this run (facts.PathStates)
    paths: dict | None = None
    #: systemd units as the host had them before this run (facts.UnitStates)
    units: dict | None = None
    #: units read along with the bundle's services (e.g. the PostgreSQL cluster)
    extra_units: tuple[str, ...] = ()

    def record(self, name: str, meta: "OperationMeta", file: RenderedFile | None = None,
               gates: list["OperationMeta"] | None = None) -> "OperationMeta":
        self.steps.append(Step(name, meta, file, gates))
        if file is not None:
            for unit in file.restarts:
                self.restarts.setdefault(unit, []).append(meta)
            for unit in file.reloads:
                self.reloads.setdefault(unit, []).append(meta)
        return meta

    def files_under(self, *prefixes: str) -> list[RenderedFile]:
        return [f for f in self.bundle.files if f.path.startswith(prefixes)]


# --- loading (cached per process: one region, one secrets store) -------------

_lock = threading.Lock()
_regions: dict[tuple, tuple] = {}
_contexts: dict[str, NodeContext] = {}


def reset() -> None:
    """Forget contexts of an earlier run (the runner calls this per deploy)."""
    _contexts.clear()
    _regions.clear()


def lab_state():
    from kontur.lab.state import load_state
    state = load_state()
    if state is None:
        raise DeployError("host data says kontur_lab but no lab is running; start one with `kontur lab up`")
    return state


def deploy_region(inventory: str, lab: bool):
    """The region as the deploy sees it: the inventory, or in the lab the same
    region at its lab addresses (:func:`kontur.lab.state.lab_region`: the lab
    network as the hospitals' networks, the lab bridge as the admin network)
    -- exactly what ``kontur render --lab`` writes."""
    region = load(inventory)
    state = None
    if lab:
        from kontur.lab.state import lab_region
        state = lab_state()
        region = lab_region(region, state)
        # the control machine connects from the lab bridge: without it among
        # the admin networks the firewall would lock the deploy out
        bridge = f"{state.bridge_address or '198.18.0.1'}/32"
        if bridge not in region.region.admin_networks:
            data = region.model_dump(mode="json")
            data["region"]["admin_networks"] = list(data["region"]["admin_networks"]) + [bridge]
            region = type(region).model_validate(data)
    return region, state


def _region(inventory: str, lab: bool, secrets: str):
    key = (inventory, lab, secrets)
    with _lock:
        if key not in _regions:
            region, state = deploy_region(inventory, lab)
            _regions[key] = (region, state, SecretStore(Path(secrets)))
        return _regions[key]


def _apt_plan(bundle: Bundle, state) -> AptPlan:
    if state is None:
        files = [f for f in bundle.files if f.path.startswith("/etc/apt/")]
        owned = {d: g for d, g in bundle.owned.items() if d.startswith("/etc/apt")}
        return AptPlan(files, owned)
    if state.apt is None:
        raise DeployError("the running lab serves no package repository (lab state has no 'apt')")
    keyring = Path(state.apt.keyring).read_bytes()
    line = state.apt.source_line.strip() + "\n"
    return AptPlan(
        [RenderedFile(LAB_KEYRING, keyring, "0644"),
         RenderedFile(LAB_SOURCE, ("# kontur lab: the lab's signed repository is the only source\n" + line).encode(), "0644")],
        {"/etc/apt/sources.list.d": "*", "/etc/apt": "sources.list"},
    )


def context() -> NodeContext:
    """The current host's node context, rendered on first use."""
    name = host.name
    if name in _contexts:
        return _contexts[name]
    node = host.data.get("kontur_node")
    inventory = host.data.get("kontur_inventory")
    secrets = host.data.get("kontur_secrets")
    if not (node and inventory and secrets):
        raise DeployError(
            f"host {name} has no kontur_node/kontur_inventory/kontur_secrets data; "
            "use the inventory inventory/region.py")
    lab = bool(host.data.get("kontur_lab"))
    region, state, store = _region(str(inventory), lab, str(secrets))
    if node not in region.nodes:
        raise DeployError(f"host {name}: node {node!r} is not in the inventory {inventory}")
    with _lock:
        bundle = render_node(region, node, store)
    bundle.files = [f for f in bundle.files if not f.path.startswith("/etc/apt/")] if lab else bundle.files
    ctx = NodeContext(node=node, region=region, bundle=bundle, lab=lab, apt=_apt_plan(bundle, state), store=store,
                      extra_units=(POSTGRESQL_CLUSTER_UNIT,) if "postgresql.service" in bundle.services else ())
    _contexts[name] = ctx
    return ctx


def contexts() -> dict[str, NodeContext]:
    return _contexts


def as_io(f: RenderedFile) -> io.BytesIO:
    return io.BytesIO(f.content)
