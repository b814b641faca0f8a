# SPDX-License-Identifier: AGPL-3.0-or-later
"""pyinfra inventory of a kontur region: the nodes of the YAML inventory,
grouped by role.

    pyinfra inventory/region.py deploys/region.py
    KONTUR_INVENTORY=region.yaml pyinfra inventory/region.py deploys/region.py --limit tsami
    KONTUR_LAB=1 pyinfra inventory/region.py deploys/region.py

Groups: ``tsami``, ``lami``, ``gateway``, ``reference``, ``research`` --
module-level lists of ``(host, data)``, the form pyinfra reads.  Hosts are
named after their nodes; ``ssh_hostname`` is the node's address.

Environment:
  KONTUR_INVENTORY   the region's YAML (default: the example region)
  KONTUR_LAB=1       the running lab instead: lab addresses, the lab's SSH key
                     and known_hosts, the lab's secrets store and apt repository
  KONTUR_SECRETS     the secrets store (default: per region, see kontur.secrets)
  KONTUR_SSH_USER, KONTUR_SSH_KEY, KONTUR_KNOWN_HOSTS, KONTUR_SSH_SUDO=1
                     how to reach production hosts (default: root, ssh's own
                     key and known_hosts; host keys are always checked); in
                     the lab the user and sudo are honoured, with the lab's key

Where the hosts are is decided by kontur.target (the same target ``kontur
deploy`` uses); each host's data carries it as ``kontur_target``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from kontur.deploy import host_groups  # noqa: E402

_groups = host_groups(os.environ.get("KONTUR_INVENTORY") or None,
                      lab=os.environ.get("KONTUR_LAB", "") not in ("", "0", "no", "false"))

tsami = _groups["tsami"]
lami = _groups["lami"]
gateway = _groups["gateway"]
reference = _groups["reference"]
research = _groups["research"]

del _groups
