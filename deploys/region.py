# SPDX-License-Identifier: AGPL-3.0-or-later
"""Deploy a region node: the entry point for pyinfra.

    pyinfra inventory/region.py deploys/region.py            # the example region
    KONTUR_INVENTORY=region.yaml pyinfra inventory/region.py deploys/region.py
    KONTUR_LAB=1 pyinfra inventory/region.py deploys/region.py   # the running lab

``kontur deploy`` runs the same :func:`deploy_node` through pyinfra's API.

Stages, on every host, in this order:

1. install    Base (package source, packages, directories)
2. configure  Base (TLS, /etc/kontur), Firewall, PostgreSQL, Orthanc, the HL7 service, the research
              feeds, nginx:
              every rendered file uploaded; each upload remembers which units
              it restarts or reloads
3. activate   in the bundle's service order (nftables, PostgreSQL, Orthanc,
              the HL7 service, the research feeds' timer, nginx): check the configuration, restart or reload only if one
              of that unit's files changed, then enabled and running
"""
from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from deploys import base, firewall, hl7, nginx, orthanc, postgresql, research  # noqa: E402
from deploys.node import context  # noqa: E402

ACTIVATE = {
    "nftables.service": firewall.activate,
    "postgresql.service": postgresql.activate,
    "orthanc.service": orthanc.activate,
    "kontur-hl7.service": hl7.activate,
    "kontur-research.timer": research.activate,
    "nginx.service": nginx.activate,
}


def deploy_node() -> None:
    """All stages for the current host."""
    ctx = context()
    base.install()
    base.configure()
    firewall.configure()
    postgresql.configure()
    orthanc.configure()
    hl7.configure()
    research.configure()
    nginx.configure()
    for unit in ctx.bundle.services:
        ACTIVATE[unit]()


if __name__ != "deploys.region":
    # executed as a deploy file by the pyinfra CLI (imported by kontur deploy: not run here)
    deploy_node()
