"""Debian packages a node needs, by role.  The lab's package repository and
the region's mirror must carry all of them (and their dependencies)."""
from __future__ import annotations

from pathlib import Path

from . import paths
from .model import Role

#: every node
BASE = ["ca-certificates", "nginx-light", "nftables", "openssl", "python3", "curl", "sudo"]
#: nodes that run an Orthanc archive
#: (orthanc-webviewer: the viewer link's full viewer, issue 12)
ORTHANC = ["orthanc", "orthanc-python", "orthanc-dicomweb", "orthanc-postgresql", "orthanc-webviewer", "dcmtk",
           "python3-pydicom"]
#: Python modules kontur's plugins import beyond the standard library, and the
#: Debian package of each (in ORTHANC, or POSTGRESQL for what only a node with
#: PostgreSQL imports): nothing else reaches a node
PLUGIN_MODULES = {"pydicom": "python3-pydicom", "psycopg2": "python3-psycopg2"}
#: Python packages a node service needs that Debian 12 does not have: shipped
#: by kontur from the control machine as pinned wheels (``./run`` fetches them
#: into ``.wheels/`` with pip; the deploy uploads them), never fetched by a node
NODE_WHEELS = {"pynetdicom": "2.0.2"}
#: where this control machine keeps them (``KONTUR_WHEEL_DIR`` for a shared wheelhouse)
WHEEL_DIR = paths.wheels()


def wheel_path(name: str, where: str = "") -> Path:
    """The pinned wheel of ``name`` on this control machine; raises naming
    what is missing (and ``where``: the host and step that need it)."""
    version = NODE_WHEELS[name]
    path = WHEEL_DIR / f"{name}-{version}-py3-none-any.whl"
    if not path.is_file():
        from .errors import OperationFailed  # noqa: PLC0415
        raise OperationFailed(f"{where + ': ' if where else ''}the wheel {path.name} ({name} {version}, pinned in "
                              f"kontur/packages.py) that the nodes' HL7 service needs is not on this control machine "
                              f"({WHEEL_DIR}); nothing was changed on any host",
                              hint=(f"fetch it: pip download --no-deps --only-binary=:all: -d {WHEEL_DIR} "
                                    f"{name}=={version} (or set KONTUR_WHEEL_DIR)") if paths.INSTALLED
                              else "./run setup fetches it (pip download, through the package registry)")
    return path


#: nodes whose index is in PostgreSQL; kontur's services keep their state there
#: too (the HL7 service writes, the plugin reads it: Debian's psycopg2)
POSTGRESQL = ["postgresql", "python3-psycopg2"]
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
