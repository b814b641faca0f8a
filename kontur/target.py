# SPDX-License-Identifier: AGPL-3.0-or-later
"""Where a command acts: a production region or the running lab.

The one place that decides it.  Every command that reaches nodes or renders
for them -- ``render``, ``deploy`` (and plain pyinfra through
``inventory/region.py``), ``check``, ``audit`` (``checks/conftest.py``), the
node-API commands (``replicate``, ``replication``, ``study``, ``quarantine``,
``users``) -- builds a :class:`Target` with :func:`resolve` and reads from it:

- the region as the nodes have it (the inventory's addresses, or the lab's:
  :func:`kontur.lab.state.lab_region`);
- how to reach each node over SSH (:mod:`kontur.reach`: ``KONTUR_SSH_USER``,
  ``KONTUR_SSH_KEY``, ``KONTUR_KNOWN_HOSTS``, ``KONTUR_SSH_SUDO``; in the lab
  the lab's key, known_hosts and per-host port, with ``KONTUR_SSH_USER`` and
  ``KONTUR_SSH_SUDO`` honoured when set);
- the package source every node gets (the region's mirror, or the lab's
  signed repository), rendered into the bundle: what ``kontur render --lab``
  writes is what ``kontur deploy --lab`` uploads;
- the secrets store (:func:`kontur.secrets.store_dir`: ``--secrets DIR``,
  ``KONTUR_SECRETS``, else the user's or the lab's).

The refusals are here too: no lab running, the lab of another region, a node
with no lab host, a store that is not there.  Nothing else in kontur (outside
``kontur/lab/``) reads the lab's state.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from . import reach
from .errors import InvalidInput, KonturError
from .model import Region
from .secrets import SecretStore, store_dir

if TYPE_CHECKING:
    from .lab.state import LabState
    from .render.bundle import Bundle
    from .render.system import AptRepository


@dataclass(frozen=True)
class Target:
    """The region as this run reaches it."""
    #: the region at the addresses the nodes have (the lab's in the lab)
    region: Region
    lab: bool
    #: the secrets store's directory (it may not exist yet: see :meth:`store`)
    secrets: Path
    #: SSH user, key, known hosts and sudo; the port is per node (:meth:`ssh`)
    ssh_settings: reach.Ssh
    #: the inventory file, when the target was made from one
    inventory: Path | None = None
    #: the running lab (None in production); read once, when the target is made
    lab_state: "LabState | None" = None

    @property
    def name(self) -> str:
        return f"the lab of region {self.region.region.name}" if self.lab else f"region {self.region.region.name}"

    # --- reaching a node ---

    def address(self, node: str) -> str:
        return self.region.nodes[node].address

    def ssh(self, node: str) -> reach.Ssh:
        """How to reach ``node`` over SSH: the settings with the node's own port."""
        if self.lab_state is not None:
            port = self.lab_state.host(node).ssh_port
        else:
            port = self.region.ports(node).ssh
        return dataclasses.replace(self.ssh_settings, port=port)

    def device_netns(self, aet: str) -> str | None:
        """The lab's network namespace of the device ``aet`` (None in production, or when the lab runs none)."""
        if self.lab_state is None or aet not in self.lab_state.modalities:
            return None
        return self.lab_state.modalities[aet].netns

    def require_hosts(self, nodes: list[str] | None = None) -> None:
        """In the lab: every one of ``nodes`` (default: the region's) has a lab host."""
        if self.lab_state is None:
            return
        missing = [n for n in (nodes or self.region.nodes) if n not in self.lab_state.hosts]
        if missing:
            where = self.inventory or self.lab_state.inventory
            raise InvalidInput(f"node(s) {', '.join(missing)} of {where} have no lab host; "
                               f"bring them up with: kontur lab up -i {where}")

    def pyinfra_data(self, node: str) -> dict[str, Any]:
        """pyinfra host data for ``node``: address, SSH settings and what the deploy reads
        (``kontur_target``: this target; see ``deploys/node.py``)."""
        data: dict[str, Any] = {
            "ssh_hostname": self.address(node),
            "kontur_node": node,
            "kontur_role": self.region.nodes[node].role.value,
            "kontur_inventory": str(self.inventory) if self.inventory else None,
            "kontur_lab": self.lab,
            "kontur_secrets": str(self.secrets),
            "kontur_target": self,
        }
        ssh = self.ssh(node)
        data.update({k: v for k, v in ssh.pyinfra_data().items() if v not in (None, "")})
        data["ssh_port"] = ssh.port
        if self.lab:
            data["base_dpkg_unsafe_io"] = True      # lab hosts are thrown away: dpkg may skip its fsyncs
        return data

    # --- the secrets store ---

    def store(self, *, create: bool = True) -> SecretStore:
        return SecretStore(self.secrets, create=create)

    def existing_store(self) -> SecretStore:
        """The store, refused when it is not there (commands that only read it)."""
        if not self.secrets.is_dir():
            how = "`kontur deploy --lab`" if self.lab else "`kontur render` (or deploy)"
            raise InvalidInput(f"the secrets store {self.secrets} does not exist; run {how} first, "
                               "or pass --secrets DIR (or KONTUR_SECRETS)")
        return self.store(create=False)

    # --- what lands on a node ---

    def apt_repository(self) -> "AptRepository | None":
        """The package source rendered for every node instead of the region's
        mirror: the lab's signed repository; None in production."""
        if self.lab_state is None:
            return None
        from .render.system import AptRepository
        apt = self.lab_state.apt
        if apt is None:
            raise KonturError("the running lab serves no package repository (its state has no 'apt')",
                              hint="bring the lab down and up again: kontur lab down && kontur lab up")
        try:
            keyring = Path(apt.keyring).read_bytes()
        except OSError as exc:
            raise KonturError(f"cannot read the lab repository's key {apt.keyring}: {exc.strerror}") from None
        return AptRepository(keyring=keyring, source_line=apt.source_line.strip())

    def render_node(self, node: str, store: SecretStore) -> "Bundle":
        from .render import render_node
        return render_node(self.region, node, store, apt=self.apt_repository())

    def render(self, store: SecretStore, nodes: list[str] | None = None) -> "list[Bundle]":
        from .render import render_region
        return render_region(self.region, store, nodes, apt=self.apt_repository())


# --- making a target ------------------------------------------------------------------

def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "yes", "true")


def production(region: Region, *, inventory: str | Path | None = None, secrets_dir: str | Path | None = None,
               env: Mapping[str, str] | None = None) -> Target:
    """The region's own hosts at their inventory addresses."""
    return Target(region=region, lab=False, secrets=store_dir(region.region.name, secrets_dir),
                  ssh_settings=reach.production(dict(os.environ if env is None else env)),
                  inventory=Path(inventory) if inventory else None)


def running_lab() -> "LabState":
    """The running lab; refused (with how to start one) when there is none or it is not up."""
    from .lab.state import require_state
    return require_state()


def lab_inventory() -> str:
    """The inventory the running lab was brought up with (``deploy --lab`` without ``-i``)."""
    return running_lab().inventory


def in_lab(region: Region, *, inventory: str | Path | None = None, secrets_dir: str | Path | None = None,
        env: Mapping[str, str] | None = None) -> Target:
    """The running lab's hosts; refused when no lab runs or it is of another region."""
    from .lab.state import lab_region
    state = running_lab()
    if state.region_name != region.region.name:
        this = f"the inventory {inventory}" if inventory else "the inventory"
        raise InvalidInput(
            f"the running lab is of region {state.region_name!r}, {this} is of region {region.region.name!r}; "
            f"pass the lab's inventory (-i {state.inventory}) or bring the lab up with this one "
            f"(kontur lab up{f' -i {inventory}' if inventory else ''})")
    env = os.environ if env is None else env
    # the lab's key and known hosts; its root by default, or the user the environment names
    ssh = reach.Ssh(user=env.get("KONTUR_SSH_USER") or state.ssh_user or "root", key=state.ssh_key or None,
                    known_hosts=state.known_hosts or None, sudo=_flag(env.get("KONTUR_SSH_SUDO")))
    return Target(region=lab_region(region, state), lab=True,
                  secrets=store_dir(region.region.name, secrets_dir, lab=True), ssh_settings=ssh,
                  inventory=Path(inventory) if inventory else None, lab_state=state)


def resolve(region: Region, *, lab: bool = False, inventory: str | Path | None = None,
            secrets_dir: str | Path | None = None, env: Mapping[str, str] | None = None) -> Target:
    """The target of a command: ``--lab`` or the production region."""
    return (in_lab if lab else production)(region, inventory=inventory, secrets_dir=secrets_dir, env=env)
