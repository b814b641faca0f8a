"""Debian packages a node needs, by role.  The lab's package repository and
the region's mirror must carry all of them (and their dependencies)."""
from __future__ import annotations

from pathlib import Path

from .model import Role

#: every node
BASE = ["ca-certificates", "nginx-light", "nftables", "openssl", "python3", "curl", "sudo"]
#: nodes that run an Orthanc archive
ORTHANC = ["orthanc", "orthanc-python", "orthanc-dicomweb", "orthanc-postgresql", "dcmtk", "python3-pydicom"]
#: Python modules kontur's plugins import beyond the standard library, and the
#: Debian package of each (in ORTHANC): nothing else reaches a node
PLUGIN_MODULES = {"pydicom": "python3-pydicom"}
#: Python packages a node service needs that Debian 12 does not have: shipped
#: by kontur from the control machine as pinned wheels (``./run`` fetches them
#: into ``.wheels/`` with pip; the deploy uploads them), never fetched by a node
NODE_WHEELS = {"pynetdicom": "2.0.2"}
WHEEL_DIR = Path(__file__).resolve().parents[1] / ".wheels"


def wheel_path(name: str) -> Path:
    """The pinned wheel of ``name`` on this control machine; raises naming what is missing."""
    version = NODE_WHEELS[name]
    path = WHEEL_DIR / f"{name}-{version}-py3-none-any.whl"
    if not path.is_file():
        from .errors import OperationFailed  # noqa: PLC0415
        raise OperationFailed(f"the wheel {path.name} ({name} {version}, pinned in kontur/packages.py) that the "
                              f"nodes' HL7 service needs is not on this control machine ({WHEEL_DIR})",
                              hint="./run setup fetches it (pip download, through the package registry)")
    return path


#: nodes whose index is in PostgreSQL
POSTGRESQL = ["postgresql"]
#: LAMIs and gateways running the HL7 service (a hospital with a MIS; kontur.render.hl7)
HL7 = ["python3-hl7"]


def packages_for(role: Role, index: str | None) -> list[str]:
    pkgs = list(BASE)
    if role in (Role.TSAMI, Role.LAMI, Role.GATEWAY, Role.RESEARCH):
        pkgs += ORTHANC
        if index == "postgresql":
            pkgs += POSTGRESQL
    return pkgs


#: the union, for building a lab repository or checking a mirror
NODE_PACKAGES = sorted(set(BASE + ORTHANC + POSTGRESQL + HL7))
