"""The lab network: one bridge holding 198.18.0.1, one network namespace
per lab address joined to it by a veth link, and an nftables table that
keeps lab traffic on the bridge.

Lab hosts get no default route and the host does not forward for them, so
they can reach the bridge and nothing else; IPv6 is off on every lab link so
not even link-local traffic leaves a namespace.
"""
from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path

from .config import BRIDGE, BRIDGE_ADDRESS, NETWORK, NFT_TABLE
from .plan import Endpoint, Plan
from .proc import run

log = logging.getLogger("kontur.lab")


def _disable_ipv6_here(ifname: str) -> None:
    """IPv6 off for an interface of this (the host's) namespace."""
    p = Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6")
    if p.exists():
        p.write_text("1\n")


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def netns_exists(name: str) -> bool:
    return Path(f"/run/netns/{name}").exists()


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in Path("/run/netns").iterdir())
    except FileNotFoundError:
        return []


def addresses_in_lab_network() -> list[tuple[str, str]]:
    """(interface, address) pairs of this namespace inside 198.18.0.0/24."""
    cp = run(["ip", "-j", "-4", "addr", "show"], what="listing addresses")
    found = []
    for link in json.loads(cp.stdout or "[]"):
        for a in link.get("addr_info", []):
            if ipaddress.IPv4Address(a["local"]) in NETWORK:
                found.append((link["ifname"], a["local"]))
    return found


def conflicts(plan: Plan) -> list[str]:
    """What on this machine is in the way of a lab with ``plan`` (empty when nothing)."""
    problems = []
    if link_exists(BRIDGE):
        problems.append(f"a network interface named {BRIDGE} already exists")
    if nft_table_exists():
        problems.append(f"an nftables table inet {NFT_TABLE} already exists")
    for ifname, addr in addresses_in_lab_network():
        problems.append(f"address {addr} (lab network {NETWORK}) is already on interface {ifname}")
    for ep in plan.endpoints:
        if netns_exists(ep.netns):
            problems.append(f"network namespace {ep.netns} already exists")
        if link_exists(ep.veth):
            problems.append(f"a network interface named {ep.veth} already exists")
    return problems


def create_bridge() -> None:
    run(["ip", "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0", "stp_state", "0"],
        what=f"creating bridge {BRIDGE}")


def setup_bridge() -> None:
    _disable_ipv6_here(BRIDGE)
    run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{NETWORK.prefixlen}", "dev", BRIDGE],
        what=f"giving {BRIDGE} the address {BRIDGE_ADDRESS}")
    run(["ip", "link", "set", BRIDGE, "up"], what=f"bringing {BRIDGE} up")


def delete_link(name: str) -> None:
    if link_exists(name):
        run(["ip", "link", "del", name], what=f"removing interface {name}")


def create_netns(name: str) -> None:
    run(["ip", "netns", "add", name], what=f"creating network namespace {name}")


def setup_netns(name: str) -> None:
    run(["ip", "-n", name, "link", "set", "lo", "up"], what=f"bringing lo up in {name}")


def delete_netns(name: str) -> None:
    if netns_exists(name):
        run(["ip", "netns", "delete", name], what=f"removing network namespace {name}")


def create_link(ep: Endpoint) -> None:
    """The veth pair of an endpoint: ``ep.veth`` on the bridge, ``eth0`` in its namespace."""
    run(["ip", "link", "add", ep.veth, "type", "veth", "peer", "name", "eth0", "netns", ep.netns],
        what=f"creating link {ep.veth} to {ep.netns}")


def setup_link(ep: Endpoint) -> None:
    """Join the link to the bridge and address its namespace end; IPv6 off on both ends."""
    ns = ep.netns
    _disable_ipv6_here(ep.veth)
    run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=1"],
        what=f"turning IPv6 off in {ns}")
    run(["ip", "link", "set", ep.veth, "master", BRIDGE, "up"], what=f"attaching {ep.veth} to {BRIDGE}")
    run(["ip", "-n", ns, "addr", "add", f"{ep.address}/{NETWORK.prefixlen}", "dev", "eth0"],
        what=f"giving {ns} the address {ep.address}")
    run(["ip", "-n", ns, "link", "set", "eth0", "up"], what=f"bringing eth0 up in {ns}")


def link_up(name: str) -> bool | None:
    """Administrative state of a bridge-side link: True up, False cut, None missing."""
    try:
        flags = int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
    except (FileNotFoundError, ValueError):
        return None
    return bool(flags & 0x1)   # IFF_UP


def set_link(name: str, up: bool) -> None:
    run(["ip", "link", "set", name, "up" if up else "down"],
        what=f"taking link {name} {'up' if up else 'down'}")


def nft_ruleset(repo_port: int) -> str:
    """Keep the lab on its bridge: the host forwards nothing to or from it, and
    accepts from it only replies, ping and the package repository."""
    return f"""table inet {NFT_TABLE} {{
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname "{BRIDGE}" oifname != "{BRIDGE}" drop
        oifname "{BRIDGE}" iifname != "{BRIDGE}" drop
    }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        iifname "{BRIDGE}" ct state established,related accept
        iifname "{BRIDGE}" ip daddr {BRIDGE_ADDRESS} tcp dport {repo_port} accept
        iifname "{BRIDGE}" icmp type echo-request accept
        iifname "{BRIDGE}" drop
    }}
}}
"""


def nft_table_exists() -> bool:
    cp = run(["nft", "list", "table", "inet", NFT_TABLE], check=False)
    return cp.returncode == 0


def create_nft(repo_port: int) -> None:
    run(["nft", "-f", "-"], input=nft_ruleset(repo_port), what="adding the lab's nftables table")


def delete_nft() -> None:
    if nft_table_exists():
        run(["nft", "delete", "table", "inet", NFT_TABLE], what="removing the lab's nftables table")
