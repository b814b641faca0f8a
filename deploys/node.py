# SPDX-License-Identifier: AGPL-3.0-or-later
"""What a deploy knows about the host it runs on: the node's rendered bundle.

Every component deploy (``deploys/<component>/``) reads the node's
:class:`~kontur.render.Bundle` through :func:`context`; the bundle is the
single source of what goes on a host -- deploys add no configuration of their
own, and the package source is in it too (the region's mirror, or in the lab
the lab's repository): the bundle is what ``kontur render [--lab]`` writes.
Where the deploy acts is the host data's ``kontur_target``
(:class:`kontur.target.Target`); nothing here reads the lab's state.

The context also records, per host, which operations uploaded which files
(so that a restart or reload follows only a change to a file that names that
unit) and a readable step name for every operation (so that a failure
names host, step and cause).

Host data read here (set by ``inventory/region.py`` and the runner,
:meth:`kontur.target.Target.pyinfra_data`): ``kontur_node``,
``kontur_target`` (else ``kontur_inventory``, ``kontur_lab``, ``kontur_secrets``).
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyinfra import host
from pyinfra.api import DeployError

from kontur.inventory import load
from kontur.render.bundle import Bundle, RenderedFile
from kontur.render.system import POSTGRESQL_CLUSTER_UNIT
from kontur.secrets import SecretStore
from kontur.target import Target, resolve

if TYPE_CHECKING:
    from pyinfra.api.operation import OperationMeta

    from kontur.model import Region


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


# --- loading (cached per process: one secrets store per directory) ------------

_lock = threading.Lock()
_stores: dict[str, SecretStore] = {}
_contexts: dict[str, NodeContext] = {}


def reset() -> None:
    """Forget contexts of an earlier run (the runner calls this per deploy)."""
    _contexts.clear()
    _stores.clear()


def host_target() -> Target:
    """Where this deploy acts (:mod:`kontur.target`): the runner and
    ``inventory/region.py`` put it in the host data as ``kontur_target``; a
    hand-made pyinfra inventory may give ``kontur_inventory`` (``kontur_lab``,
    ``kontur_secrets``) instead."""
    target = host.data.get("kontur_target")
    if isinstance(target, Target):
        return target
    inventory = host.data.get("kontur_inventory")
    if not inventory:
        raise DeployError(f"host {host.name} has no kontur_target or kontur_inventory data; "
                          "use the inventory inventory/region.py")
    return resolve(load(inventory), lab=bool(host.data.get("kontur_lab")), inventory=inventory,
                   secrets_dir=host.data.get("kontur_secrets"))


def _store(target: Target) -> SecretStore:
    key = str(target.secrets)
    with _lock:
        if key not in _stores:
            _stores[key] = target.store()
        return _stores[key]


def _apt_plan(bundle: Bundle) -> AptPlan:
    """The bundle's package source (the region's mirror, or the lab's repository:
    the target rendered it), installed first."""
    files = [f for f in bundle.files if f.path.startswith("/etc/apt/")]
    owned = {d: g for d, g in bundle.owned.items() if d.startswith("/etc/apt")}
    return AptPlan(files, owned)


def context() -> NodeContext:
    """The current host's node context, rendered on first use."""
    name = host.name
    if name in _contexts:
        return _contexts[name]
    node = host.data.get("kontur_node")
    if not node:
        raise DeployError(f"host {name} has no kontur_node data; use the inventory inventory/region.py")
    target = host_target()
    region = target.region
    if node not in region.nodes:
        raise DeployError(f"host {name}: node {node!r} is not in the region {region.region.name}")
    store = _store(target)
    with _lock:
        bundle = target.render_node(node, store)
    ctx = NodeContext(node=node, region=region, bundle=bundle, lab=target.lab, apt=_apt_plan(bundle), store=store,
                      extra_units=(POSTGRESQL_CLUSTER_UNIT,) if "postgresql.service" in bundle.services else ())
    _contexts[name] = ctx
    return ctx


def contexts() -> dict[str, NodeContext]:
    return _contexts


def as_io(f: RenderedFile) -> io.BytesIO:
    return io.BytesIO(f.content)
