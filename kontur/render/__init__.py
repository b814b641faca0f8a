"""Rendering: the validated region becomes each node's files.

``render_node(region, node, store)`` returns a :class:`Bundle` -- every file
the node needs with its owner, mode and the services a change to it restarts.
JSON files are Python data serialised with sorted keys; the rest (systemd
drop-ins, nginx, nftables) come from jinja2 templates under ``templates/``
with StrictUndefined.  Same inventory + same secrets store = same bytes.
"""
from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import jinja2

from .. import custody, paths, revocation
from ..model import STORAGE_ROOTS, Region, Role
from ..packages import packages_for
from ..pki import node_cert
from ..rotation import trust_bundle, trusted
from ..rules import services_of
from ..secrets import SecretStore
from . import hl7, research
from . import orthanc as oc
from . import system
from .bundle import Bundle, Directory, RenderedFile

#: where rendered files and directories may land on a node (issue 15): every
#: path of a bundle is one of these or below one.  Orthanc's storage is below
#: one of model.STORAGE_ROOTS, which are listed here too.
RENDERED_ROOTS = (
    "/etc/apt/sources.list.d",      # the region's package mirror (system.APT_SOURCE)
    "/etc/kontur",                  # TLS material, policy, the store's record, the HL7 service's config
    "/etc/nftables.conf",           # the firewall
    "/etc/nginx/sites-available",   # the HTTPS front
    "/etc/orthanc",                 # Orthanc's configuration
    "/etc/postgresql",              # PostgreSQL's conf.d drop-in (system.POSTGRESQL_CONF)
    "/etc/systemd/system",          # Orthanc's drop-in, the HL7 service's unit
    "/usr/lib/kontur",              # plugins, Lua, scripts, the HL7 service and its wheels
    "/var/lib/kontur",              # kontur's state on the node
    *STORAGE_ROOTS,                 # Orthanc's storage (strictly below a root)
)

TEMPLATES = paths.TEMPLATES
PLUGINS = paths.PLUGINS
LUA = paths.LUA
SCRIPTS = paths.SCRIPTS

ORTHANC_UNIT = "orthanc.service"
NGINX_UNIT = "nginx.service"
NFT_UNIT = "nftables.service"
PG_UNIT = "postgresql.service"

#: the regional CA's revocation list (kontur.revocation), next to the node's certificate
CRL_FILE = f"{oc.TLS_DIR}/crl.pem"

#: TLS 1.2 suites nginx offers and asks for: forward-secret (ECDHE) AEAD only, as Mozilla's
#: "intermediate" profile; the region's keys are ECDSA, the RSA ones serve a replaced certificate
TLS12_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"))

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def template(name: str, **context) -> bytes:
    return _env.get_template(name).render(**context).encode("utf-8")


def as_json(data) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def is_archive(role: Role) -> bool:
    return role in (Role.TSAMI, Role.LAMI, Role.GATEWAY, Role.RESEARCH)


def firewall_rules(region: Region, node: str) -> list[dict]:
    """Who may reach which port of ``node``: declared peers, modalities, admins."""
    spec = region.nodes[node]
    ports = region.ports(node)
    admin = list(region.region.admin_networks)
    rules = []
    if admin:
        rules.append({"port": ports.ssh, "sources": admin, "why": "ssh from the admin networks"})
    https_from = {region.nodes[p].address for p in oc.peers_allowed_in(region, node)}
    https_from |= set(admin)
    why = "https (mutual TLS) from peer nodes and the admin networks"
    if spec.role == Role.REFERENCE:
        hk = region.hospital_of(node)
        net = region.hospitals[hk].network if hk else None
        if net:
            https_from.add(net)
            why = "https for the reference centre's users, peers and admins"
    if spec.role in (Role.TSAMI, Role.LAMI):
        # doctors of the hospital (and, for the TsAMI, the secure network) read in a browser (R6)
        hk = region.hospital_of(node)
        if hk and region.hospitals[hk].network:
            https_from.add(region.hospitals[hk].network)
    # every user with an account here reads from their hospital's network (R6):
    # nginx still asks for a regional certificate, Orthanc for the password
    users_nets = {region.hospitals[u.hospital].network for u in region.users_of(node)
                  if u.hospital in region.hospitals and region.hospitals[u.hospital].network}
    if users_nets - https_from:
        https_from |= users_nets
        why += "; the hospitals of users with an account here"
    if https_from:
        rules.append({"port": ports.https, "sources": _sorted_sources(https_from), "why": why})
    if is_archive(spec.role):
        mods = sorted({m.host for _h, m in region.dicom_senders(node)}, key=ipaddress.IPv4Address)
        if mods:
            rules.append({"port": ports.dicom, "sources": mods, "why": "DICOM from the hospital's modalities"})
    rules += hl7.firewall(region, node)
    return rules


def _sorted_sources(values: set[str]) -> list[str]:
    """Collapse overlapping addresses and networks (nft refuses overlapping
    elements in one set) and print hosts without /32."""
    nets = ipaddress.collapse_addresses(ipaddress.IPv4Network(v, strict=False) for v in values)
    return [str(n.network_address) if n.prefixlen == 32 else str(n) for n in nets]


def _static_files(src: Path, dest: str, pattern: str, restarts: tuple[str, ...]) -> list[RenderedFile]:
    out = []
    if not src.is_dir():
        return out
    for f in sorted(src.rglob(pattern)):
        if "__pycache__" in f.parts or not f.is_file():
            continue
        rel = f.relative_to(src).as_posix()
        out.append(RenderedFile(f"{dest}/{rel}", f.read_bytes(), "0644", restarts=restarts))
    return out


def policy_for(region: Region, node: str, upstream: dict | None) -> dict | None:
    try:
        from ..policy import build_policy
    except ModuleNotFoundError:
        return None
    return build_policy(region, node, upstream)


def render_node(region: Region, node: str, store: SecretStore,
                apt: system.AptRepository | None = None) -> Bundle:
    """Every file, directory, package and service of ``node``.  ``apt``: the
    package source instead of the region's mirror (the lab's repository; the
    target decides it, :meth:`kontur.target.Target.render_node`)."""
    if node not in region.nodes:
        raise KeyError(node)
    spec = region.nodes[node]
    role = spec.role
    index = region.index_of(node) if is_archive(role) else None
    ports = region.ports(node)
    title = region.region.title
    cas = trusted(store, title)        # the regional CA; two during a CA rotation (kontur.rotation)
    cert = node_cert(store, title, node, [spec.address])
    bundle = Bundle(node=node, role=role.value, packages=packages_for(role, index))
    system.add_apt_source(region, bundle, apt)

    # TLS material: nginx (root) and Orthanc/plugin (group orthanc) read the key
    key_group = "orthanc" if is_archive(role) else "root"
    bundle.directories += [
        Directory("/etc/kontur", "0755"),
        Directory(oc.TLS_DIR, "0750", "root", key_group),
        Directory("/usr/lib/kontur", "0755"),
        Directory("/usr/lib/kontur/bin", "0755"),
    ]
    tls_reload = (NGINX_UNIT,)
    bundle.files += [
        RenderedFile(oc.CA_FILE, trust_bundle(store, title), "0644", reloads=tls_reload),
        RenderedFile(oc.CERT_FILE, cert.cert_pem, "0644", reloads=tls_reload),
        RenderedFile(oc.KEY_FILE, cert.key_pem, "0640", "root", key_group, reloads=tls_reload, secret=True),
        # browser certificates revoked with `kontur users revoke` (nginx refuses them)
        RenderedFile(CRL_FILE, revocation.crl_bundle(store, cas), "0644", reloads=tls_reload),
        # which store this node was deployed from: deploy refuses another one's CA and passwords
        RenderedFile(custody.STORE_FILE, as_json(custody.record(region.region.name, store.identity(title))),
                     "0644"),
    ]

    # nginx in front of everything
    nginx_ctx = dict(node=node, role=role.value, https_port=ports.https, http_port=ports.http,
                     cert_file=oc.CERT_FILE, key_file=oc.KEY_FILE, ca_file=oc.CA_FILE,
                     crl_file=CRL_FILE, tls12_ciphers=TLS12_CIPHERS)
    if role == Role.REFERENCE:
        up = spec.reads_from
        nginx_ctx.update(upstream_name=up, upstream_address=region.nodes[up].address,
                         upstream_https_port=region.ports(up).https)
    bundle.files.append(RenderedFile("/etc/nginx/sites-available/kontur.conf",
                                     template("nginx-site.conf.j2", **nginx_ctx), reloads=(NGINX_UNIT,)))
    bundle.owned["/etc/nginx/sites-enabled"] = "*"
    bundle.facts["nginx_site"] = "/etc/nginx/sites-available/kontur.conf"

    # firewall
    bundle.files.append(RenderedFile("/etc/nftables.conf",
                                     template("nftables.conf.j2", node=node, role=role.value,
                                              rules=firewall_rules(region, node)),
                                     "0755", reloads=(NFT_UNIT,)))

    services = [NFT_UNIT]
    if is_archive(role):
        services += _render_orthanc(region, node, store, bundle, index)
    services.append(NGINX_UNIT)
    bundle.services = services
    bundle.facts["ports"] = ports.model_dump()
    bundle.facts["listening"] = dict(services_of(region, node))
    return bundle


def _render_orthanc(region: Region, node: str, store: SecretStore, bundle: Bundle, index: str) -> list[str]:
    spec = region.nodes[node]
    restart = (ORTHANC_UNIT,)
    passwords = store.password
    creds = oc.credentials_config(region, node, passwords)
    bundle.files += [
        RenderedFile("/etc/orthanc/orthanc.json", as_json(oc.core_config(region, node)),
                     "0640", "root", "orthanc", restarts=restart),
        RenderedFile("/etc/orthanc/dicom.json", as_json(oc.dicom_config(region, node)),
                     "0640", "root", "orthanc", restarts=restart),
        RenderedFile("/etc/orthanc/plugins.json", as_json(oc.plugin_config(region, node)),
                     "0640", "root", "orthanc", restarts=restart),
        RenderedFile("/etc/orthanc/credentials.json", as_json(creds),
                     "0600", "orthanc", "orthanc", restarts=restart, secret=True),
        RenderedFile("/etc/systemd/system/orthanc.service.d/kontur.conf",
                     template("orthanc-dropin.conf.j2", node=node), restarts=restart),
        RenderedFile("/usr/lib/kontur/bin/check-orthanc-config",
                     (SCRIPTS / "check-orthanc-config").read_bytes(), "0755"),
    ]
    bundle.files += _static_files(PLUGINS, oc.KONTUR_PLUGIN_DIR, "*.py", restart)
    bundle.files += _static_files(LUA, oc.KONTUR_LUA_DIR, "*.lua", restart)

    upstream = None
    if spec.upstream:
        up = region.nodes[spec.upstream]
        upstream = {
            "name": spec.upstream,
            "aet": up.aet,
            "url": f"https://{up.address}:{region.ports(spec.upstream).https}/",
            "username": oc.peer_login(node),
            "password": passwords(f"links/{node}->{spec.upstream}"),
            "ca_file": oc.CA_FILE,
            "cert_file": oc.CERT_FILE,
            "key_file": oc.KEY_FILE,
        }
    policy = policy_for(region, node, upstream)
    if policy is not None and hl7.serves(region, node):
        policy["worklist"] = hl7.worklist_policy(region, node)
    if policy is not None:
        bundle.files.append(RenderedFile(oc.POLICY_FILE, as_json(policy), "0600", "orthanc", "orthanc",
                                         restarts=restart, secret=True))

    bundle.directories += [
        Directory("/etc/orthanc", "0750", "root", "orthanc"),
        Directory("/etc/systemd/system/orthanc.service.d", "0755"),
        Directory(spec.storage_dir, "0750", "orthanc", "orthanc"),
        Directory("/var/lib/kontur", "0750", "orthanc", "orthanc"),
        Directory(oc.KONTUR_PLUGIN_DIR, "0755"),
        Directory(oc.KONTUR_LUA_DIR, "0755"),
    ]
    # Debian ships its own /etc/orthanc/*.json (one of them world-readable,
    # several defining the same sections): kontur owns the directory
    bundle.owned["/etc/orthanc"] = "*.json"
    services = []
    if index == "postgresql":
        bundle.facts["postgresql"] = {
            "database": "orthanc",
            "user": "orthanc",
            "password_key": f"nodes/{node}/postgresql",
            "port": region.ports(node).postgresql,
        }
        system.add_postgresql_conf(region, node, bundle, (PG_UNIT,))
        services.append(PG_UNIT)
    services.append(ORTHANC_UNIT)
    services += hl7.add(region, node, bundle)
    services += research.add(region, node, bundle, store)
    return services


def render_region(region: Region, store: SecretStore, nodes: list[str] | None = None,
                  apt: system.AptRepository | None = None) -> list[Bundle]:
    names = nodes or list(region.nodes)
    return [render_node(region, n, store, apt) for n in names]


__all__ = ["Bundle", "Directory", "RenderedFile", "render_node", "render_region"]
