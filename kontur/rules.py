"""Whole-region rules: what a single field cannot tell.

Each rule yields ``(location, message)``; the location is a path into the
inventory document (``("hospitals", "onco", "modalities", 0, "aet")``).
"""
from __future__ import annotations

import ipaddress
from collections import defaultdict
from typing import Iterator

from .model import RESERVED_NODE_NAMES, RESERVED_NODE_PREFIX, HospitalType, Region, Role

Loc = tuple
Found = Iterator[tuple[Loc, str]]


def check_region(region: Region) -> list[tuple[Loc, str]]:
    out: list[tuple[Loc, str]] = []
    for rule in RULES:
        out.extend(rule(region))
    return out


def references(region: Region) -> Found:
    nodes = region.nodes
    for name, spec in nodes.items():
        for field in ("upstream", "reads_from"):
            target = getattr(spec, field)
            if target is not None and target not in nodes:
                yield ("nodes", name, field), f"unknown node {target!r}; expected one of: {', '.join(nodes)}"
            elif target == name:
                yield ("nodes", name, field), "a node cannot point at itself"
    for hk, h in region.hospitals.items():
        if h.node is not None and h.node not in nodes:
            yield ("hospitals", hk, "node"), f"unknown node {h.node!r}; expected one of: {', '.join(nodes)}"
    for i, u in enumerate(region.users):
        if u.role not in region.roles:
            yield ("users", i, "role"), f"unknown role {u.role!r}; expected one of: {', '.join(region.roles) or '(no roles defined)'}"
        if u.hospital is not None and u.hospital not in region.hospitals:
            yield ("users", i, "hospital"), f"unknown hospital {u.hospital!r}; expected one of: {', '.join(region.hospitals)}"
        for j, n in enumerate(u.nodes or []):
            if n not in nodes:
                yield ("users", i, "nodes", j), f"unknown node {n!r}; expected one of: {', '.join(nodes)}"


def roles_present(region: Region) -> Found:
    tsamis = region.nodes_by_role(Role.TSAMI)
    if not tsamis:
        yield ("nodes",), "the region has no node with role tsami; expected exactly one central archive"
    elif len(tsamis) > 1:
        for n in tsamis[1:]:
            yield ("nodes", n, "role"), f"a second TsAMI; the region has one central archive ({tsamis[0]})"
    for name, spec in region.nodes.items():
        if spec.role in (Role.TSAMI, Role.LAMI, Role.GATEWAY, Role.RESEARCH) and spec.aet is None:
            yield ("nodes", name, "aet"), f"a {spec.role.value} node needs its DICOM AE title"
        if spec.role in (Role.LAMI, Role.GATEWAY):
            if spec.upstream is None:
                yield ("nodes", name, "upstream"), f"a {spec.role.value} node needs an upstream (the TsAMI it sends to)"
        elif spec.upstream is not None:
            yield ("nodes", name, "upstream"), f"only LAMI and gateway nodes have an upstream, not a {spec.role.value}"
        if spec.role == Role.REFERENCE:
            if spec.reads_from is None:
                yield ("nodes", name, "reads_from"), "a reference node needs reads_from: the archive its users read (the TsAMI)"
            elif spec.reads_from in region.nodes and region.nodes[spec.reads_from].role not in (Role.TSAMI, Role.LAMI):
                yield ("nodes", name, "reads_from"), "expected an archive node (tsami or lami)"
        elif spec.reads_from is not None:
            yield ("nodes", name, "reads_from"), f"only reference nodes read from another node, not a {spec.role.value}"


def _route_to_tsami(region: Region, start: str) -> bool:
    seen = set()
    node = start
    while node in region.nodes and node not in seen:
        seen.add(node)
        spec = region.nodes[node]
        if spec.role == Role.TSAMI:
            return True
        node = spec.upstream
    return False


def routes(region: Region) -> Found:
    for name, spec in region.nodes.items():
        if spec.upstream and spec.upstream in region.nodes and not _route_to_tsami(region, name):
            yield ("nodes", name, "upstream"), "this chain of upstreams never reaches the TsAMI (a loop or a dead end)"
    owners: dict[str, str] = {}
    for hk, h in region.hospitals.items():
        node = region.nodes.get(h.node) if h.node else None
        if h.node and h.node in owners:
            yield ("hospitals", hk, "node"), f"node {h.node!r} already serves hospital {owners[h.node]!r}; each hospital has its own"
        elif h.node:
            owners[h.node] = hk
        if h.type == HospitalType.LAMI:
            if h.node is None:
                yield ("hospitals", hk, "node"), "a type-1 hospital needs its own LAMI: name a node with role lami"
            elif node is not None and node.role != Role.LAMI:
                yield ("hospitals", hk, "node"), f"a type-1 hospital needs a LAMI, but {h.node!r} is a {node.role.value}"
        elif h.type == HospitalType.GATEWAY:
            if h.node is None:
                yield ("hospitals", hk, "node"), "a type-2 hospital has no route to the TsAMI: name a node with role gateway"
            elif node is not None and node.role != Role.GATEWAY:
                yield ("hospitals", hk, "node"), f"a type-2 hospital sends through a gateway, but {h.node!r} is a {node.role.value}"
            elif node is not None and not _route_to_tsami(region, h.node):
                yield ("hospitals", hk, "node"), f"a type-2 hospital has no route to the TsAMI: gateway {h.node!r} does not reach it"
        elif h.type == HospitalType.REFERENCE:
            if node is not None and node.role != Role.REFERENCE:
                yield ("hospitals", hk, "node"), f"a reference centre's node has role reference, not {node.role.value}"
            if h.modalities and node is None:
                yield ("hospitals", hk, "modalities"), "a reference centre with modalities needs a node for them to send to"
        if h.modalities and node is not None and node.role not in (Role.LAMI, Role.GATEWAY):
            yield ("hospitals", hk, "modalities"), f"modalities send to the hospital's node, and {h.node!r} ({node.role.value}) has no DICOM archive"


def _where(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def unique_aets(region: Region) -> Found:
    owner: dict[str, Loc] = {}

    def claim(aet: str, loc: Loc) -> Found:
        if aet in owner:
            yield loc, f"AE title {aet!r} is already used by {_where(owner[aet][:-1])}; AE titles are unique in the region"
        else:
            owner[aet] = loc

    for name, spec in region.nodes.items():
        if spec.aet:
            yield from claim(spec.aet, ("nodes", name, "aet"))
    from .render.hl7 import REPORTS_AET  # noqa: PLC0415 - the HL7 service's own AE title on every node
    for hk, h in region.hospitals.items():
        for i, m in enumerate(h.modalities):
            if m.aet == REPORTS_AET:
                yield (("hospitals", hk, "modalities", i, "aet"),
                       f"AE title {REPORTS_AET!r} is kontur's HL7 service's (it stores the reports); give the "
                       "modality another")
            yield from claim(m.aet, ("hospitals", hk, "modalities", i, "aet"))
    names: dict[str, Loc] = {}
    for hk, h in region.hospitals.items():
        for i, m in enumerate(h.modalities):
            if m.key in names:
                yield ("hospitals", hk, "modalities", i, "name"), f"modality name {m.key!r} is already used; give it a distinct name"
            names[m.key] = ("hospitals", hk, "modalities", i)


def services_of(region: Region, node: str) -> list[tuple[str, int]]:
    spec = region.nodes[node]
    p = region.ports(node)
    out = [("ssh", p.ssh), ("https", p.https)]
    if spec.role in (Role.TSAMI, Role.LAMI, Role.GATEWAY, Role.RESEARCH):
        out += [("dicom", p.dicom), ("http", p.http)]
        if region.index_of(node) == "postgresql":
            out.append(("postgresql", p.postgresql))
        if region.mis_hospitals(node):
            out += [("hl7", p.hl7), ("mpps", p.mpps)]
    return out


def unique_endpoints(region: Region) -> Found:
    taken: dict[tuple[str, int], str] = {}

    def claim(addr: str, port: int, what: str, loc: Loc) -> Found:
        if (addr, port) in taken:
            yield loc, f"{addr}:{port} is already taken by {taken[(addr, port)]}; two services cannot share one address and port"
        else:
            taken[(addr, port)] = what

    for name, spec in region.nodes.items():
        for svc, port in services_of(region, name):
            yield from claim(spec.address, port, f"node {name} ({svc})", ("nodes", name, "ports", svc))
    addr_owner: dict[str, str] = {}
    for name, spec in region.nodes.items():
        if spec.address in addr_owner:
            yield ("nodes", name, "address"), f"{spec.address} is already the address of node {addr_owner[spec.address]}; each node is its own host"
        else:
            addr_owner[spec.address] = name
    for hk, h in region.hospitals.items():
        for i, m in enumerate(h.modalities):
            if m.host in addr_owner:
                yield ("hospitals", hk, "modalities", i, "host"), f"{m.host} is the address of node {addr_owner[m.host]}; a modality has its own address"
            yield from claim(m.host, m.port, f"modality {m.aet}", ("hospitals", hk, "modalities", i, "port"))
        if h.mis:
            if h.mis.host in addr_owner:
                yield ("hospitals", hk, "mis", "host"), f"{h.mis.host} is the address of node {addr_owner[h.mis.host]}; the MIS runs on its own server"
            yield from claim(h.mis.host, h.mis.port, f"the MIS of {hk}", ("hospitals", hk, "mis", "port"))


def addresses_in_networks(region: Region) -> Found:
    secure = ipaddress.IPv4Network(region.region.secure_network)
    for name, spec in region.nodes.items():
        if ipaddress.IPv4Address(spec.address) not in secure:
            yield ("nodes", name, "address"), f"{spec.address} is outside the region's secure network {secure}; archives live inside it (R1)"
    for hk, h in region.hospitals.items():
        if not h.network:
            continue
        net = ipaddress.IPv4Network(h.network)
        if not net.subnet_of(secure):
            # the hospital's network is let in to HTTPS (its users read in a browser):
            # outside the secure network it would open the archives to another network
            yield ("hospitals", hk, "network"), (
                f"{net} is not inside the region's secure network {secure}; expected a hospital network "
                f"inside it (its users reach the archives' HTTPS from there)")
            continue
        if h.node and h.node in region.nodes and ipaddress.IPv4Address(region.nodes[h.node].address) not in net:
            yield ("hospitals", hk, "node"), f"node {h.node} ({region.nodes[h.node].address}) is outside the hospital network {net}"
        for i, m in enumerate(h.modalities):
            if ipaddress.IPv4Address(m.host) not in net:
                yield ("hospitals", hk, "modalities", i, "host"), f"{m.host} is outside the hospital network {net}"


def reserved_node_names(region: Region) -> Found:
    """Issue 15: a node named like one of the store's own files would take them."""
    for name in region.nodes:
        if name in RESERVED_NODE_NAMES or name.startswith(RESERVED_NODE_PREFIX):
            yield ("nodes", name), (
                f"node name {name!r} is reserved: kontur's secrets store and bundles use "
                f"{', '.join(sorted(RESERVED_NODE_NAMES))} and names starting with {RESERVED_NODE_PREFIX!r} "
                "for themselves; give the node another host name")


def users_unique(region: Region) -> Found:
    seen: set[str] = set()
    for i, u in enumerate(region.users):
        if u.login in seen:
            yield ("users", i, "login"), f"login {u.login!r} appears twice; logins are unique in the region"
        seen.add(u.login)
        if u.login.startswith("kontur") or u.login.startswith("peer-"):
            yield ("users", i, "login"), "logins starting with 'kontur' or 'peer-' are reserved for kontur's own service accounts"


def staff_named(region: Region) -> Found:
    """R7: every hospital with a node names who is responsible for it."""
    for hk, h in region.hospitals.items():
        if h.node and not h.staff:
            yield ("hospitals", hk, "staff"), ("no responsible staff; on-call needs a name, position, "
                                              "work and mobile phone for every hospital node (R7)")


def unique_issuers(region: Region) -> Found:
    """Issue 10: one issuer per hospital, or two hospitals' patient 12345 become one."""
    seen: dict[str, str] = {}
    for hk in region.hospitals:
        issuer = region.issuer_of(hk)
        if issuer in seen:
            yield ("hospitals", hk, "patient_id_issuer"), (
                f"Issuer of Patient ID {issuer!r} is also {seen[issuer]}'s; each hospital needs its own, "
                f"or patients of both with one Patient ID are taken for one person")
        seen.setdefault(issuer, hk)


def mis_orders(region: Region) -> Found:
    """Issue 11: the HL7 service recognises a hospital by its MIS's MSH-4
    (facility) and a device by its AE title or station names: both must be
    unambiguous, and the MIS must be a host of its own."""
    facilities: dict[str, str] = {}
    modality_hosts = {m.host: (hk, m.aet) for hk, h in region.hospitals.items() for m in h.modalities}
    for hk, h in region.hospitals.items():
        if h.mis is None:
            continue
        fac = h.mis.facility or hk.upper()
        if fac in facilities:
            yield ("hospitals", hk, "mis", "facility"), (
                f"MSH-4 facility {fac!r} is also {facilities[fac]}'s MIS; each hospital's MIS needs its own, "
                "or its orders are scheduled at the other hospital")
        facilities.setdefault(fac, hk)
        if h.mis.host in modality_hosts:
            other_h, aet = modality_hosts[h.mis.host]
            yield ("hospitals", hk, "mis", "host"), (
                f"{h.mis.host} is the address of modality {aet} ({other_h}); the MIS is a host of its own")
        names: dict[str, str] = {m.aet: m.aet for m in h.modalities}
        for i, m in enumerate(h.modalities):
            for n in m.station_names:
                if n in names and names[n] != m.aet:
                    yield ("hospitals", hk, "modalities", i, "station_names"), (
                        f"station name {n!r} of {m.aet} is already {names[n]}'s; an order naming it would go "
                        "to two devices")
                names.setdefault(n, m.aet)


def research_feeds(region: Region) -> Found:
    """Issue 16: a feed goes from a collection point (the TsAMI, or a LAMI) to a research node, selects
    something, and chooses only PS3.15 options kontur applies (the plugin's parser decides)."""
    from .policy import plugins_importable
    plugins_importable()
    from kontur_plugins.research.feeds import parse_selection
    from kontur_plugins.research.profile import ProfileError, parse_profile
    res = region.research
    for name, f in res.feeds.items():
        loc = ("research", "feeds", name)
        dest = region.nodes.get(f.destination)
        if dest is None or dest.role != Role.RESEARCH:
            research = region.nodes_by_role(Role.RESEARCH)
            yield loc + ("destination",), (f"{f.destination!r} is not a research node; expected one of: "
                                           f"{', '.join(research) or '(the region has no node with role research)'}")
        if f.at is not None and (f.at not in region.nodes or region.nodes[f.at].role not in (Role.TSAMI, Role.LAMI)):
            yield loc + ("at",), f"{f.at!r} is not the TsAMI or a LAMI; a feed is exported where studies are collected"
        for i, h in enumerate(f.select.hospitals):
            if h not in region.hospitals:
                yield loc + ("select", "hospitals", i), f"unknown hospital {h!r}; expected one of: {', '.join(region.hospitals)}"
        problems: list[str] = []
        parse_selection(f.select.model_dump(exclude_none=True), "select", problems)
        for p in problems:
            yield loc + ("select",), p.removeprefix("select ").removeprefix("select: ")
        try:
            parse_profile(f.profile.model_dump(), "profile")
        except ProfileError as exc:
            for p in exc.problems:
                yield loc + ("profile",), p.removeprefix("profile.").removeprefix("profile: ")
    for i, r in enumerate(res.reidentify_roles):
        if r not in region.roles:
            yield ("research", "reidentify_roles", i), f"unknown role {r!r}; expected one of: {', '.join(region.roles)}"


RULES = [reserved_node_names, staff_named, unique_issuers, references, roles_present, routes, unique_aets, unique_endpoints, addresses_in_networks, users_unique, mis_orders, research_feeds]
