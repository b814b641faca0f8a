# SPDX-License-Identifier: AGPL-3.0-or-later
"""How the control machine reaches a node over SSH: one place for the settings
``kontur deploy`` (pyinfra) and ``kontur check`` (ssh(1)) both use.

Production: ``KONTUR_SSH_USER`` (default root), ``KONTUR_SSH_KEY``,
``KONTUR_KNOWN_HOSTS`` and ``KONTUR_SSH_SUDO=1`` (a non-root user whose
commands run through ``sudo -n``).  Host keys are never trusted on first
sight.  The lab: its own key, known_hosts and per-host port.

Key exchange: deploys and the audit keep OpenSSH's default, the post-quantum
hybrid ``sntrup761x25519-sha512`` (what they carry includes keys and
passwords).  ``kontur check`` (:data:`CHECK_KEX`) asks for X25519 alone: its
sessions carry a read-only probe script and counts back, no secret, and the
hybrid's key generation costs the control machine 0.13 s of CPU per node
(measured: 0.157 s vs 0.024 s per connection) -- most of what a check of 20
nodes spent on the control machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


#: ``kontur check``'s key exchange (see above): X25519, OpenSSH's default before 9.0
CHECK_KEX = "curve25519-sha256,curve25519-sha256@libssh.org"


@dataclass(frozen=True)
class Ssh:
    user: str = "root"
    key: str | None = None
    known_hosts: str | None = None
    sudo: bool = False
    port: int = 22
    connect_timeout: int = 5
    #: ``KexAlgorithms`` for ssh(1), None: OpenSSH's default
    kex: str | None = None

    def pyinfra_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ssh_user": self.user, "ssh_key": self.key,
                                "ssh_known_hosts_file": self.known_hosts,
                                "ssh_strict_host_key_checking": "yes"}
        if self.port != 22:
            data["ssh_port"] = self.port
        if self.sudo:
            data["_sudo"] = True
        return data

    def config_text(self) -> str:
        """The same settings as an ssh_config(5) file (testinfra's ``--ssh-config``)."""
        lines = ["Host *", f"  User {self.user}", f"  Port {self.port}", "  StrictHostKeyChecking yes",
                 "  BatchMode yes", f"  ConnectTimeout {self.connect_timeout}", "  LogLevel ERROR",
                 "  ControlMaster auto", "  ControlPath /tmp/kontur-ssh-%C", "  ControlPersist 60"]
        if self.key:
            lines += [f"  IdentityFile {self.key}", "  IdentitiesOnly yes"]
        if self.known_hosts:
            lines += [f"  UserKnownHostsFile {self.known_hosts}", "  GlobalKnownHostsFile /dev/null"]
        return "\n".join(lines) + "\n"

    def argv(self, address: str, *command: str) -> list[str]:
        """``ssh`` running ``command`` on ``address`` (through ``sudo -n`` when set)."""
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={self.connect_timeout}", "-o", "LogLevel=ERROR", "-p", str(self.port)]
        if self.key:
            opts = ["-i", self.key, "-o", "IdentitiesOnly=yes", *opts]
        if self.known_hosts:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.kex:
            opts += ["-o", f"KexAlgorithms={self.kex}"]
        cmd = list(command)
        if self.sudo and self.user != "root":
            cmd = ["sudo", "-n", *cmd]
        return ["ssh", *opts, f"{self.user}@{address}", *cmd]


def production(env: dict[str, str] | None = None) -> Ssh:
    env = os.environ if env is None else env
    return Ssh(user=env.get("KONTUR_SSH_USER") or "root", key=env.get("KONTUR_SSH_KEY") or None,
               known_hosts=env.get("KONTUR_KNOWN_HOSTS") or None,
               sudo=(env.get("KONTUR_SSH_SUDO") or "").lower() in ("1", "yes", "true"))


def lab(state, node: str) -> Ssh:
    """A lab host: the lab's key and known_hosts, the host's own port."""
    return Ssh(user=state.ssh_user, key=state.ssh_key, known_hosts=state.known_hosts,
               port=state.host(node).ssh_port)
