"""Orthanc's configuration, built as Python data (never JSON in a template).

Split by topic into files under /etc/orthanc (Orthanc reads every *.json in
the directory and refuses a key defined twice):

- ``orthanc.json``      core: storage, HTTP on loopback, security baseline
- ``dicom.json``        the DICOM server: AET, port, modalities, what they may do
- ``plugins.json``      plugins and their sections (DICOMweb, Python, kontur)
- ``credentials.json``  users, peers and database password (0600, orthanc)

Only what differs from Orthanc's defaults is written, except the security
options, which are written explicitly so an audit can read them in the file
(shared/research/reliability_perf_anchors.md §A.1 lists each with its safe value).
"""
from __future__ import annotations

from typing import Any

from ..model import HospitalType, Region, Role

PLUGIN_DIR = "/usr/share/orthanc/plugins"
KONTUR_PLUGIN_DIR = "/usr/lib/kontur/plugins"
KONTUR_LUA_DIR = "/usr/lib/kontur/lua"
TLS_DIR = "/etc/kontur/tls"
CA_FILE = f"{TLS_DIR}/ca.crt"
CERT_FILE = f"{TLS_DIR}/node.crt"
KEY_FILE = f"{TLS_DIR}/node.key"
POLICY_FILE = "/etc/kontur/policy.json"
SERVICE_USER = "kontur"


def peer_login(node: str) -> str:
    """The account a node uses when it calls another node's REST API."""
    return f"peer-{node}"


def security_baseline() -> dict[str, Any]:
    """The hardened options every kontur node carries (§A.1)."""
    return {
        "RemoteAccessAllowed": False,          # nginx reaches Orthanc on loopback
        "AuthenticationEnabled": True,
        "SslEnabled": False,                   # segfaults in Debian's 1.10.1: nginx does TLS
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        "WebDavEnabled": False,
        "LimitFindResults": 100,
        "LimitFindInstances": 100,
        "HttpsVerifyPeers": True,
        "HttpsCACertificates": CA_FILE,
        "OverwriteInstances": False,           # replays are idempotent
        "StoreMD5ForAttachments": True,
        "DeidentifyLogs": True,
        "SaveJobs": True,
    }


def dicom_security() -> dict[str, Any]:
    return {
        "DicomCheckCalledAet": True,
        "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "UnknownSopClassAccepted": False,
    }


def core_config(region: Region, node: str) -> dict[str, Any]:
    spec = region.nodes[node]
    ports = region.ports(node)
    cfg: dict[str, Any] = {
        "Name": spec.title or node,
        "StorageDirectory": spec.storage_dir,
        "IndexDirectory": spec.storage_dir,
        "DefaultEncoding": region.region.encoding,
        "HttpPort": ports.http,
        "HttpServerEnabled": True,
        "StableAge": region.defaults.stable_age,
        # role-based rights, enforced by orthanc-lua/roles.lua
        "KonturRoles": roles_table(region, node),
        "LuaScripts": [f"{KONTUR_LUA_DIR}/roles.lua"],
    }
    cfg.update(security_baseline())
    return cfg


def roles_table(region: Region, node: str) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for u in region.users_of(node):
        table[u.login] = region.roles[u.role].model_dump()
        scope = viewer_scope(region, node, u)
        if scope:
            # on the TsAMI: the viewer link only, for their hospital's studies and those shared
            # with it (roles.lua; kontur_plugins.shares)
            table[u.login]["hospital"] = scope
    full = {"view": True, "download": True, "upload": True, "delete": True, "admin": True}
    table[SERVICE_USER] = dict(full)
    senders = set(region.downstream_of(node))
    exporters = set(research_exporters(region, node))
    for peer in peers_allowed_in(region, node):
        if peer in exporters and peer not in senders:
            # a collection point sending de-identified copies here (issue 16): it stores, nothing else
            table[peer_login(peer)] = dict(RESEARCH_EXPORTER)
        elif peer in senders:
            # a node replicating here: it uploads, lists what it verifies and asks kontur's
            # receiver routes; it may not read other hospitals' studies (roles.lua, "peer")
            table[peer_login(peer)] = dict(PEER_SENDER)
        else:
            # the upstream (on-demand import, tele-audit) and a reference centre's front read here
            table[peer_login(peer)] = {"view": True, "download": True, "upload": True, "delete": False,
                                       "admin": False}
    return dict(sorted(table.items()))


def viewer_scope(region: Region, node: str, user) -> str | None:
    """The hospital a user is kept to on ``node``: on the TsAMI, a user of a
    hospital with its own archive or gateway sees that hospital's studies and
    those shared with it (issue 12: double reading, second opinion); users
    with no hospital and a reference centre's read across the region."""
    if region.nodes[node].role != Role.TSAMI or not user.hospital or user.hospital not in region.hospitals:
        return None
    return user.hospital if region.hospitals[user.hospital].type != HospitalType.REFERENCE else None


#: the rights of a downstream node's account: only the routes replication needs
PEER_SENDER = {"view": False, "download": False, "upload": False, "delete": False, "admin": False, "peer": True}


#: the rights of a node that exports research copies into a research node: store them, read nothing
RESEARCH_EXPORTER = {"view": False, "download": False, "upload": True, "delete": False, "admin": False}


def research_exporters(region: Region, node: str) -> list[str]:
    """The nodes whose research feeds deliver into ``node``."""
    return sorted({n for n in region.nodes for f in region.research_feeds_at(n).values() if f.destination == node})


def peers_allowed_in(region: Region, node: str) -> list[str]:
    """Nodes that log in to ``node``'s REST API with a peer account."""
    spec = region.nodes[node]
    out = list(region.downstream_of(node))
    if spec.upstream:
        out.append(spec.upstream)
    out += [n for n, s in region.nodes.items() if s.reads_from == node]
    out += research_exporters(region, node)
    return sorted(set(out))


def dicom_config(region: Region, node: str) -> dict[str, Any]:
    spec = region.nodes[node]
    ports = region.ports(node)
    modalities: dict[str, Any] = {}
    worklist = set(region.mis_hospitals(node))
    for hospital, m in region.dicom_senders(node):
        modalities[m.key] = {
            "AET": m.aet,
            "Host": m.host,
            "Port": m.port,
            # least privilege: a modality stores and echoes, and asks for its worklist
            # where the hospital's MIS sends orders (issue 11); nothing else
            "AllowEcho": True,
            "AllowStore": True,
            "AllowFind": False,
            "AllowFindWorklist": hospital in worklist,
            "AllowMove": False,
            "AllowGet": False,
            "AllowStorageCommitment": False,
        }
    from . import hl7  # noqa: PLC0415 - the HL7 service's own entry (it stores reports, finds studies)
    peer = hl7.orthanc_peer(region, node)
    if peer is not None:
        modalities[hl7.REPORTS_MODALITY] = peer
    cfg: dict[str, Any] = {
        "DicomServerEnabled": True,
        "DicomAet": spec.aet,
        "DicomPort": ports.dicom,
        "DicomModalities": dict(sorted(modalities.items())),
        "DicomModalitiesInDatabase": False,
    }
    cfg.update(dicom_security())
    return cfg


#: Debian's orthanc-webviewer
WEB_VIEWER = "libOrthancWebViewer.so"


def plugin_config(region: Region, node: str, *, python: bool = True) -> dict[str, Any]:
    # the Web Viewer: the full viewer the viewer link's page opens for a series (issue 12)
    plugins = [f"{PLUGIN_DIR}/libOrthancDicomWeb.so", f"{PLUGIN_DIR}/{WEB_VIEWER}"]
    if region.index_of(node) == "postgresql":
        plugins.append(f"{PLUGIN_DIR}/libOrthancPostgreSQLIndex.so")
    cfg: dict[str, Any] = {
        "Plugins": plugins,
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": True,
            "StudiesMetadata": "MainDicomTags",
            "SeriesMetadata": "MainDicomTags",
        },
    }
    if python:
        plugins.append(f"{PLUGIN_DIR}/libOrthancPython.so")
        cfg["PythonScript"] = f"{KONTUR_PLUGIN_DIR}/kontur_entry.py"
        cfg["PythonVerbose"] = False
        cfg["Kontur"] = {"PolicyFile": POLICY_FILE}
    return cfg


def credentials_config(region: Region, node: str, passwords) -> dict[str, Any]:
    """``passwords(key)`` returns the stored password for a secrets key."""
    users = {u.login: passwords(f"users/{u.login}") for u in region.users_of(node)}
    users[SERVICE_USER] = passwords(f"nodes/{node}/{SERVICE_USER}")
    for peer in peers_allowed_in(region, node):
        users[peer_login(peer)] = passwords(f"links/{peer}->{node}")
    cfg: dict[str, Any] = {"RegisteredUsers": dict(sorted(users.items()))}
    peers = {}
    for other in outgoing_peers(region, node):
        o = region.nodes[other]
        peers[other] = {
            "Url": f"https://{o.address}:{region.ports(other).https}/",
            "Username": peer_login(node),
            "Password": passwords(f"links/{node}->{other}"),
            "CertificateFile": CERT_FILE,
            "CertificateKeyFile": KEY_FILE,
        }
    if peers:
        cfg["OrthancPeers"] = dict(sorted(peers.items()))
    if region.index_of(node) == "postgresql":
        cfg["PostgreSQL"] = {
            "EnableIndex": True,
            "EnableStorage": False,
            "Host": "127.0.0.1",
            "Port": region.ports(node).postgresql,
            "Database": "orthanc",
            "Username": "orthanc",
            "Password": passwords(f"nodes/{node}/postgresql"),
            "Lock": True,
        }
    return cfg


def outgoing_peers(region: Region, node: str) -> list[str]:
    """Nodes ``node`` calls over HTTPS: its upstream; the TsAMI calls its
    LAMIs and gateways (on-demand import, tele-audit); a collection point its
    feeds' research nodes."""
    spec = region.nodes[node]
    out = []
    if spec.upstream:
        out.append(spec.upstream)
    if spec.role == Role.TSAMI:
        out += region.downstream_of(node)
    # the research node a feed delivers into (issue 16: the exporter sends through this Orthanc)
    out += [f.destination for f in region.research_feeds_at(node).values()]
    return sorted(set(out))
