"""Debian packages a node needs, by role.  The lab's package repository and
the region's mirror must carry all of them (and their dependencies)."""
from __future__ import annotations

from .model import Role

#: every node
BASE = ["ca-certificates", "nginx-light", "nftables", "openssl", "python3", "curl", "sudo"]
#: nodes that run an Orthanc archive
ORTHANC = ["orthanc", "orthanc-python", "orthanc-dicomweb", "orthanc-postgresql", "dcmtk", "python3-pydicom"]
#: Python modules kontur's plugins import beyond the standard library, and the
#: Debian package of each (in ORTHANC): nothing else reaches a node
PLUGIN_MODULES = {"pydicom": "python3-pydicom"}
#: nodes whose index is in PostgreSQL
POSTGRESQL = ["postgresql"]


def packages_for(role: Role, index: str | None) -> list[str]:
    pkgs = list(BASE)
    if role in (Role.TSAMI, Role.LAMI, Role.GATEWAY, Role.RESEARCH):
        pkgs += ORTHANC
        if index == "postgresql":
            pkgs += POSTGRESQL
    return pkgs


#: the union, for building a lab repository or checking a mirror
NODE_PACKAGES = sorted(set(BASE + ORTHANC + POSTGRESQL))
