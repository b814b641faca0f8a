"""The HL7 integration service on a LAMI or gateway whose hospital has a MIS
(issue 11): its code, the pinned wheel it needs, its configuration, its
systemd unit, its state directory, and what Orthanc needs to answer the
worklist from it.  One module: everything the renderer knows about the service.

The service (``services/kontur_hl7``) listens for the MIS's MLLP on
``ports.hl7`` and runs the MPPS SCP on ``ports.mpps``; Orthanc's DICOM port
answers the worklist (kontur's plugin reads the service's state).  The
firewall admits MLLP from the MIS's address only and MPPS from the
hospital's modalities only (``firewall_rules``).
"""
from __future__ import annotations

from typing import Any

from .. import paths
from ..model import Region, Role
from ..packages import HL7 as PACKAGES
from ..packages import NODE_WHEELS, wheel_path
from .bundle import Bundle, Directory, RenderedFile

UNIT = "kontur-hl7.service"
SERVICES_SRC = paths.SERVICES
SERVICE_DIR = "/usr/lib/kontur/services"
WHEEL_DIR = "/usr/lib/kontur/wheels"
CONFIG = "/etc/kontur/hl7.json"
STATE_DIR = "/var/lib/kontur/hl7"
DB = f"{STATE_DIR}/hl7.sqlite3"
#: the service's own database in the node's PostgreSQL (beside Orthanc's index)
PG_DATABASE = "kontur_hl7"
#: both the service and Orthanc run as this system user: peer authentication
#: on the local socket to the role of the same name (Orthanc's index role)
PG_ROLE = "orthanc"
PG_SOCKET_DIR = "/var/run/postgresql"
#: where Orthanc's plugin tells the service the studies' steps on the node (archived, delivered)
EVENTS_SOCKET = "/run/kontur-hl7/events.sock"


def serves(region: Region, node: str) -> bool:
    return bool(region.mis_hospitals(node))


def site(region: Region, node: str) -> dict[str, Any]:
    """The hospitals whose MIS sends here, their devices, the regional classifier."""
    hospitals = []
    for hk in region.mis_hospitals(node):
        h = region.hospitals[hk]
        hospitals.append({
            "hospital": hk,
            "facilities": [h.mis.facility or hk.upper()],
            "mis_host": h.mis.host,
            "mis_port": h.mis.port,            # where the MIS takes kontur's notifications (MLLP)
            "issuer": region.issuer_of(hk),
            # a result coded with one of these is pathology, besides OBX-8's flags (Kemerovo §3.2)
            "pathology_codes": sorted(set(h.mis.pathology_codes)),
            "devices": [{"aet": m.aet, "modality": m.modality, "station_names": list(m.station_names),
                         "host": m.host} for m in h.modalities if not m.legacy_folder],
        })
    pkg = region.transfer.classifier
    return {"hospitals": hospitals,
            "classifier": dict(sorted(pkg.codes.items())) if pkg else {},
            "classifier_version": pkg.version if pkg else ""}


#: the service's AE title towards its own Orthanc: it finds a result's study
#: (C-FIND) and stores the report into it (C-STORE), from loopback only
REPORTS_AET = "KONTUR_HL7"
REPORTS_MODALITY = "kontur-hl7-service"


def orthanc_peer(region: Region, node: str) -> dict[str, Any] | None:
    """The service's entry in Orthanc's ``DicomModalities`` (None where it does not run)."""
    if not serves(region, node):
        return None
    return {"AET": REPORTS_AET, "Host": "127.0.0.1", "Port": region.ports(node).mpps,
            "AllowEcho": True, "AllowStore": True, "AllowFind": True, "AllowFindWorklist": False,
            "AllowMove": False, "AllowGet": False, "AllowStorageCommitment": False}


def database(region: Region, node: str) -> dict[str, Any]:
    """Where the service keeps its state (``services/kontur_hl7/db.py``): the
    node's PostgreSQL where it has one (backed up and watched with the index),
    else SQLite in the state directory.  The service writes it, the plugin reads it."""
    if region.index_of(node) == "postgresql":
        return {"postgresql": {"host": PG_SOCKET_DIR, "port": region.ports(node).postgresql,
                               "dbname": PG_DATABASE, "user": PG_ROLE}}
    return {"sqlite": DB}


def viewer_url(region: Region, node: str) -> str:
    """The URL template the MIS keeps for a study (reglament §4.2: the patient, the
    order and the performed study in it), on the HTTPS front of the archive that
    keeps the study: the LAMI itself; for a gateway, which keeps a study only
    until it is delivered, its upstream (the TsAMI), where the hospital's users
    open their hospital's studies."""
    spec = region.nodes[node]
    if spec.role == Role.GATEWAY and spec.upstream in region.nodes:
        node, spec = spec.upstream, region.nodes[spec.upstream]
    return f"https://{spec.address}:{region.ports(node).https}/kontur/view/{{patient}}/{{accession}}/{{study}}"


def config(region: Region, node: str) -> dict[str, Any]:
    ports = region.ports(node)
    return {
        "listen": {"host": "0.0.0.0", "port": ports.hl7},
        "state_dir": STATE_DIR,
        "database": database(region, node),
        "application": "KONTUR",
        "max_message_bytes": 4 * 1024 * 1024,
        "idle_timeout_seconds": 300,
        "mpps": {"host": "0.0.0.0", "port": ports.mpps, "ae_title": region.nodes[node].aet},
        # the studies' steps on this node, from Orthanc's plugin (a local socket)
        "events": {"socket": EVENTS_SOCKET},
        # notifications to the hospital's MIS (issue 12), each with the study's viewer URL on this node
        "notify": {"application": "KONTUR", "viewer_url": viewer_url(region, node)},
        # results (ORU^R01) into their studies as reports: this node's own Orthanc, over loopback
        "reports": {"host": "127.0.0.1", "port": ports.dicom, "called_aet": region.nodes[node].aet,
                    "calling_aet": REPORTS_AET},
        "site": site(region, node),
    }


def unit(wheels: list[str], postgresql: bool = False) -> bytes:
    path = ":".join([SERVICE_DIR] + [f"{WHEEL_DIR}/{w}" for w in wheels])
    after = "network-online.target postgresql.service" if postgresql else "network-online.target"
    return f"""# kontur: the HL7 integration service (orders from the MIS into the worklist, MPPS)
[Unit]
Description=kontur HL7 integration service (MLLP from the MIS, MPPS from the modalities)
After={after}
Wants=network-online.target

[Service]
Type=simple
User=orthanc
Group=orthanc
Environment=PYTHONPATH={path}
Environment=PYTHONDONTWRITEBYTECODE=1
ExecStart=/usr/bin/python3 -m kontur_hl7.server --config {CONFIG}
Restart=always
RestartSec=2
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ReadWritePaths={STATE_DIR}
# the socket Orthanc's plugin tells the studies' steps on: /run/kontur-hl7, the orthanc user's
RuntimeDirectory=kontur-hl7
RuntimeDirectoryMode=0750

[Install]
WantedBy=multi-user.target
""".encode()


def worklist_policy(region: Region, node: str) -> dict[str, Any]:
    """The plugin's ``worklist`` section: where it reads the items."""
    return {"enabled": True, "db": database(region, node), "events_socket": EVENTS_SOCKET}


def firewall(region: Region, node: str) -> list[dict]:
    """MLLP from the MIS only; MPPS from the hospital's modalities only."""
    if not serves(region, node):
        return []
    ports = region.ports(node)
    s = site(region, node)
    mis = sorted({h["mis_host"] for h in s["hospitals"]})
    mods = sorted({d["host"] for h in s["hospitals"] for d in h["devices"]})
    rules = [{"port": ports.hl7, "sources": mis, "why": "HL7 (MLLP) from the hospital's MIS"}]
    if mods:
        rules.append({"port": ports.mpps, "sources": mods, "why": "MPPS from the hospital's modalities"})
    return rules


def add(region: Region, node: str, bundle: Bundle) -> list[str]:
    """Put the service into ``bundle``; returns its unit (to start after Orthanc)."""
    if not serves(region, node):
        return []
    restart = (UNIT,)
    on_pg = "postgresql" in database(region, node)
    for pkg in PACKAGES:
        if pkg not in bundle.packages:
            bundle.packages.append(pkg)
    for f in sorted((SERVICES_SRC / "kontur_hl7").glob("*.py")):
        bundle.files.append(RenderedFile(f"{SERVICE_DIR}/kontur_hl7/{f.name}", f.read_bytes(), "0644",
                                         restarts=restart))
    wheels = []
    for name in sorted(NODE_WHEELS):
        w = wheel_path(name, where=f"{node}, step 'HL7 service: configure' (uploads it to the node)")
        wheels.append(w.name)
        bundle.files.append(RenderedFile(f"{WHEEL_DIR}/{w.name}", w.read_bytes(), "0644", restarts=restart))
    from . import as_json  # noqa: PLC0415 - the package's one JSON writer
    bundle.files += [
        RenderedFile(CONFIG, as_json(config(region, node)), "0640", "root", "orthanc", restarts=restart),
        RenderedFile(f"/etc/systemd/system/{UNIT}", unit(wheels, on_pg), "0644", restarts=restart),
    ]
    bundle.directories += [
        Directory(SERVICE_DIR, "0755"),
        Directory(f"{SERVICE_DIR}/kontur_hl7", "0755"),
        Directory(WHEEL_DIR, "0755"),
        Directory(STATE_DIR, "0750", "orthanc", "orthanc"),
    ]
    bundle.facts["hl7"] = {"unit": UNIT, "port": region.ports(node).hl7, "mpps_port": region.ports(node).mpps}
    if on_pg:       # the deploy creates it, owned by the role Orthanc and the service log in as
        bundle.facts.setdefault("postgresql", {}).setdefault("databases", []).append(PG_DATABASE)
    return [UNIT]
