"""Pure planning: which lab address, namespace and link every inventory
address gets.  No side effects; ``kontur lab up`` carries the plan out.

Order is deterministic: ``Region.all_addresses()`` (nodes in inventory order,
then each hospital's modalities and MIS) maps onto 198.18.0.2, .3, ...

A running lab that follows an edited inventory (``kontur lab up`` again) plans
with ``keep``, its current map: every address it already has keeps its lab
address (and so its namespace and link), and only the new ones take the lowest
free lab addresses.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..errors import InvalidInput
from ..model import Region, check_hostname
from .config import FIRST_HOST, NETWORK

#: addresses the lab network can hand out (.2 ... .254)
CAPACITY = NETWORK.num_addresses - FIRST_HOST - 1


@dataclass(frozen=True)
class Endpoint:
    """One lab address: a network namespace with one veth link to the bridge."""
    kind: str               # "node", "modality" or "mis"
    label: str              # node name, modality AE titles, or hospital key(s)
    inventory_address: str
    address: str            # the lab address
    netns: str
    veth: str               # the bridge-side end of the link; the namespace side is eth0


@dataclass
class Plan:
    address_map: dict[str, str]
    endpoints: list[Endpoint]
    #: node -> endpoint
    nodes: dict[str, Endpoint] = field(default_factory=dict)
    #: modality AE title -> (hospital, endpoint)
    modalities: dict[str, tuple[str, Endpoint]] = field(default_factory=dict)
    #: hospital -> (port, endpoint)
    mis: dict[str, tuple[int, Endpoint]] = field(default_factory=dict)


def lab_address(index: int) -> str:
    return str(NETWORK.network_address + FIRST_HOST + index)


def make_plan(region: Region, keep: dict[str, str] | None = None) -> Plan:
    """Map every inventory address to a lab address and name its namespace and link.

    ``keep`` (inventory address -> lab address, a running lab's map): those
    addresses keep their lab address where the region still has them.

    Raises InvalidInput when a node name cannot be a host name or the region
    has more addresses than the lab network holds.
    """
    for name in region.nodes:
        try:
            check_hostname(name)
        except ValueError as exc:
            raise InvalidInput(f"node {name!r}: {exc}; a lab host is named after its node") from None
    addresses = region.all_addresses()
    if len(addresses) > CAPACITY:
        raise InvalidInput(
            f"the region has {len(addresses)} addresses (nodes, modalities, MIS endpoints) but the lab "
            f"network {NETWORK} holds {CAPACITY}; rehearse a part of the region (a smaller inventory)")
    address_map = _assign(addresses, keep or {})

    node_of = {spec.address: name for name, spec in region.nodes.items()}
    modality_aets: dict[str, list[str]] = {}
    mis_of: dict[str, list[str]] = {}
    for hk, h in region.hospitals.items():
        for m in h.modalities:
            modality_aets.setdefault(m.host, []).append(m.aet)
        if h.mis:
            mis_of.setdefault(h.mis.host, []).append(hk)

    endpoints: dict[str, Endpoint] = {}
    for inv, lab in address_map.items():
        octet = int(ipaddress.IPv4Address(lab)) & 0xFF
        if inv in node_of:
            kind, label, netns = "node", node_of[inv], f"kl-{node_of[inv]}"
        elif inv in modality_aets:
            # a modality and an MIS may share an address (different ports): one namespace
            kind, label, netns = "modality", ",".join(modality_aets[inv] + mis_of.get(inv, [])), f"kl-m{octet}"
        else:
            kind, label, netns = "mis", ",".join(mis_of[inv]), f"kl-mis{octet}"
        endpoints[inv] = Endpoint(kind, label, inv, lab, netns, f"klv{octet}")

    plan = Plan(address_map=address_map, endpoints=list(endpoints.values()))
    for name, spec in region.nodes.items():
        plan.nodes[name] = endpoints[spec.address]
    for hk, h in region.hospitals.items():
        for m in h.modalities:
            plan.modalities[m.aet] = (hk, endpoints[m.host])
        if h.mis:
            plan.mis[hk] = (h.mis.port, endpoints[h.mis.host])
    return plan


def _assign(addresses: list[str], keep: dict[str, str]) -> dict[str, str]:
    """Lab addresses in order; with ``keep``, kept ones first and new ones in the gaps."""
    if not keep:
        return {inv: lab_address(i) for i, inv in enumerate(addresses)}
    kept = {inv: keep[inv] for inv in addresses if inv in keep}
    used = set(kept.values())
    free = (a for a in (lab_address(i) for i in range(CAPACITY)) if a not in used)
    return {inv: kept[inv] if inv in kept else next(free) for inv in addresses}
